// Command image builds tokenkeeper's manager into an OCI image without a
// container engine or daemon (`make image`), using go-containerregistry.
//
// The image has one layer and no shell or package manager:
//
//	/manager                            static Go binary (CGO_ENABLED=0), the entrypoint
//	/etc/passwd, /etc/group             root and nonroot (65532), as in distroless
//	/etc/ssl/certs/ca-certificates.crt  Mozilla's roots, from golang.org/x/crypto/x509roots/fallback
//	/home/nonroot, /tmp
//
// It runs as 65532:65532, so runAsNonRoot can be checked by the kubelet, and
// carries the OCI labels source, version and revision.
//
// Builds are reproducible: the binary is built with -trimpath, every file in
// the layer and every time in the config carry SOURCE_DATE_EPOCH (make image
// passes the commit's time), and gzip output depends only on its input, so
// the same sources, version, revision, epoch and Go toolchain give the same
// digest.
//
// Output, under --out:
//
//	oci/                       an OCI image layout; `crane push` of it keeps the digest
//	tokenkeeper-<version>.tar  a docker-archive tarball with the same config and layer, for docker load,
//	                           podman load and the kind, k3d and minikube image loaders
//	digest                     the manifest digest, also printed on stdout
package main

import (
	"archive/tar"
	"bytes"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/x509roots/fallback/bundle"
)

const (
	versionPkg = "github.com/tokenkeeper/tokenkeeper/internal/version"
	nonroot    = 65532
	caFile     = "etc/ssl/certs/ca-certificates.crt"
)

type options struct {
	root       string // repository root: where ./cmd is built
	out        string
	repository string // image name without tag, e.g. ghcr.io/tokenkeeper/tokenkeeper
	version    string
	revision   string
	source     string
	arch       string
	epoch      time.Time
}

func main() {
	var o options
	epoch := os.Getenv("SOURCE_DATE_EPOCH")
	flag.StringVar(&o.root, "root", ".", "Repository root (holds go.mod and cmd/).")
	flag.StringVar(&o.out, "out", "dist/image", "Output folder; replaced.")
	flag.StringVar(&o.repository, "repository", "tokenkeeper", "Image name without tag; the tarball is tagged <repository>:<version>.")
	flag.StringVar(&o.version, "version", "dev", "Version stamped into the binary, the tag and the label.")
	flag.StringVar(&o.revision, "revision", "unknown", "Source revision (git commit) stamped into the binary and the label.")
	flag.StringVar(&o.source, "source", "https://github.com/tokenkeeper/tokenkeeper", "org.opencontainers.image.source label.")
	flag.StringVar(&o.arch, "arch", "amd64", "GOARCH of the image (linux only).")
	flag.StringVar(&epoch, "epoch", epoch, "Unix time of every file and of the image (default $SOURCE_DATE_EPOCH, else 0).")
	flag.Parse()
	if epoch != "" {
		sec, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			fatal(fmt.Errorf("--epoch/SOURCE_DATE_EPOCH %q: %w", epoch, err))
		}
		o.epoch = time.Unix(sec, 0).UTC()
	} else {
		o.epoch = time.Unix(0, 0).UTC()
	}

	start := time.Now()
	digest, err := build(o)
	if err != nil {
		fatal(err)
	}
	fmt.Fprintf(os.Stderr, "image: %s:%s (linux/%s) built in %.1fs into %s\n", o.repository, o.version, o.arch, time.Since(start).Seconds(), o.out)
	fmt.Println(digest)
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "image: %v\n", err)
	os.Exit(1)
}

func build(o options) (v1.Hash, error) {
	tag, err := name.NewTag(o.repository + ":" + o.version)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("image name: %w", err)
	}
	tmp, err := os.MkdirTemp("", "tokenkeeper-image-")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.RemoveAll(tmp)

	bin := filepath.Join(tmp, "manager")
	if err := buildManager(o, bin); err != nil {
		return v1.Hash{}, err
	}
	manager, err := os.ReadFile(bin)
	if err != nil {
		return v1.Hash{}, err
	}
	layerTar, err := rootFS(manager, o.epoch)
	if err != nil {
		return v1.Hash{}, err
	}
	img, err := image(o, layerTar)
	if err != nil {
		return v1.Hash{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return v1.Hash{}, err
	}

	if err := os.RemoveAll(o.out); err != nil {
		return v1.Hash{}, err
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return v1.Hash{}, err
	}
	lp, err := layout.Write(filepath.Join(o.out, "oci"), empty.Index)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("writing OCI layout: %w", err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": tag.String(),
	})); err != nil {
		return v1.Hash{}, fmt.Errorf("writing OCI layout: %w", err)
	}
	tarPath := filepath.Join(o.out, "tokenkeeper-"+o.version+".tar")
	if err := tarball.WriteToFile(tarPath, tag, img); err != nil {
		return v1.Hash{}, fmt.Errorf("writing %s: %w", tarPath, err)
	}
	if err := os.WriteFile(filepath.Join(o.out, "digest"), []byte(digest.String()+"\n"), 0o644); err != nil {
		return v1.Hash{}, err
	}
	return digest, nil
}

// buildManager builds ./cmd as a static linux binary stamped with the version
// and revision.
func buildManager(o options, out string) error {
	ldflags := fmt.Sprintf("-s -w -X %s.version=%s -X %s.revision=%s", versionPkg, o.version, versionPkg, o.revision)
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags, "-o", out, "./cmd")
	cmd.Dir = o.root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+o.arch, "GOFLAGS=", "GOWORK=off")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd: %w", err)
	}
	return nil
}

// rootFS returns the image's only layer as an uncompressed tar.
func rootFS(manager []byte, epoch time.Time) ([]byte, error) {
	ca, err := caBundle()
	if err != nil {
		return nil, err
	}
	type entry struct {
		name     string
		mode     int64 // permission bits, plus fs.ModeDir for folders
		uid      int
		contents []byte
	}
	dir := func(name string, perm int64, uid int) entry {
		return entry{name: name, mode: int64(fs.ModeDir) | perm, uid: uid}
	}
	file := func(name string, perm int64, contents []byte) entry {
		return entry{name: name, mode: perm, contents: contents}
	}
	entries := []entry{
		dir("etc/", 0o755, 0),
		file("etc/group", 0o644, []byte("root:x:0:\nnonroot:x:65532:\n")),
		file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")),
		dir("etc/ssl/", 0o755, 0),
		dir("etc/ssl/certs/", 0o755, 0),
		file(caFile, 0o644, ca),
		dir("home/", 0o755, 0),
		dir("home/nonroot/", 0o700, nonroot),
		file("manager", 0o755, manager),
		dir("tmp/", 0o1777, 0),
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name:    e.name,
			Mode:    e.mode & 0o7777,
			Uid:     e.uid,
			Gid:     e.uid,
			ModTime: epoch,
			Format:  tar.FormatPAX,
		}
		if fs.FileMode(e.mode)&fs.ModeDir != 0 {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.contents))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.contents); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// caBundle is Mozilla's root store, as shipped in Go's x509roots/fallback
// module (pinned in go.mod), in PEM. Roots that NSS trusts only for
// certificates issued before a distrust date are left out: a PEM file cannot
// carry that constraint.
func caBundle() ([]byte, error) {
	var b bytes.Buffer
	n := 0
	for r := range bundle.Roots() {
		if r.Constraint != nil {
			continue
		}
		if err := pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate}); err != nil {
			return nil, err
		}
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("no root certificates in golang.org/x/crypto/x509roots/fallback/bundle")
	}
	return b.Bytes(), nil
}

// image assembles the OCI image around the layer.
func image(o options, layerTar []byte) (v1.Image, error) {
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	created := v1.Time{Time: o.epoch}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   created,
			CreatedBy: "hack/image: /manager, /etc/passwd, /etc/group, CA certificates",
			Comment:   "tokenkeeper manager " + o.version,
		},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", o.arch
	cf.Created = created
	cf.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", nonroot, nonroot),
		Entrypoint: []string{"/manager"},
		WorkingDir: "/",
		Env: []string{
			"PATH=/",
			"SSL_CERT_FILE=/" + caFile,
		},
		Labels: map[string]string{
			"org.opencontainers.image.source":      o.source,
			"org.opencontainers.image.version":     o.version,
			"org.opencontainers.image.revision":    o.revision,
			"org.opencontainers.image.title":       "tokenkeeper",
			"org.opencontainers.image.description": "Kubernetes operator that keeps OAuth access tokens fresh",
			"org.opencontainers.image.created":     o.epoch.Format(time.RFC3339),
		},
	}
	return mutate.ConfigFile(img, cf)
}
