package manifests

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The parts of the OCI image spec the tests read. The image is read with the
// standard library only, apart from the code that wrote it, so a format
// mistake in hack/image cannot cancel out.
type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

type ociManifest struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Config        ociDescriptor   `json:"config"`
	Layers        []ociDescriptor `json:"layers"`
}

type ociConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Created      string `json:"created"`
	Config       struct {
		User       string            `json:"User"`
		Entrypoint []string          `json:"Entrypoint"`
		Cmd        []string          `json:"Cmd"`
		Env        []string          `json:"Env"`
		WorkingDir string            `json:"WorkingDir"`
		Labels     map[string]string `json:"Labels"`
	} `json:"config"`
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// ociImage is an image read from an OCI layout, its blobs verified.
type ociImage struct {
	digest   string
	refName  string
	manifest ociManifest
	config   ociConfig
	blobs    map[string][]byte // by digest
}

// readOCILayout reads the only image of an OCI image layout, checking every
// blob against its digest and size.
func readOCILayout(t testing.TB, dir string) *ociImage {
	t.Helper()
	var layoutFile struct {
		Version string `json:"imageLayoutVersion"`
	}
	readJSON(t, filepath.Join(dir, "oci-layout"), &layoutFile)
	if layoutFile.Version != "1.0.0" {
		t.Fatalf("oci-layout: imageLayoutVersion %q", layoutFile.Version)
	}
	var index struct {
		SchemaVersion int             `json:"schemaVersion"`
		Manifests     []ociDescriptor `json:"manifests"`
	}
	readJSON(t, filepath.Join(dir, "index.json"), &index)
	if index.SchemaVersion != 2 || len(index.Manifests) != 1 {
		t.Fatalf("index.json: schemaVersion %d with %d manifests, want 2 with one image", index.SchemaVersion, len(index.Manifests))
	}
	img := &ociImage{blobs: map[string][]byte{}}
	blob := func(d ociDescriptor, wantType string) []byte {
		t.Helper()
		if d.MediaType != wantType {
			t.Errorf("%s: media type %q, want %q", d.Digest, d.MediaType, wantType)
		}
		hexDigest, ok := strings.CutPrefix(d.Digest, "sha256:")
		if !ok {
			t.Fatalf("digest %q is not sha256", d.Digest)
		}
		data, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", hexDigest))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != hexDigest || int64(len(data)) != d.Size {
			t.Fatalf("blob %s: content does not match its digest or size %d", d.Digest, d.Size)
		}
		img.blobs[d.Digest] = data
		return data
	}
	md := index.Manifests[0]
	img.digest, img.refName = md.Digest, md.Annotations["org.opencontainers.image.ref.name"]
	if err := json.Unmarshal(blob(md, "application/vnd.oci.image.manifest.v1+json"), &img.manifest); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(blob(img.manifest.Config, "application/vnd.oci.image.config.v1+json"), &img.config); err != nil {
		t.Fatal(err)
	}
	for _, l := range img.manifest.Layers {
		blob(l, "application/vnd.oci.image.layer.v1.tar+gzip")
	}
	return img
}

func readJSON(t testing.TB, file string, v any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// unpack extracts the image's layers into dir, with the owners and modes of
// the archive when running as root, and returns every path it holds.
func (img *ociImage) unpack(t testing.TB, dir string) []string {
	t.Helper()
	if len(img.manifest.Layers) != len(img.config.RootFS.DiffIDs) {
		t.Fatalf("%d layers, %d diff_ids", len(img.manifest.Layers), len(img.config.RootFS.DiffIDs))
	}
	var names []string
	for i, l := range img.manifest.Layers {
		zr, err := gzip.NewReader(bytes.NewReader(img.blobs[l.Digest]))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		eachTarEntry(t, io.TeeReader(zr, h), func(hdr *tar.Header, tr io.Reader) {
			names = append(names, hdr.Name)
			target := filepath.Join(dir, filepath.FromSlash(hdr.Name))
			if !strings.HasPrefix(target, dir+string(filepath.Separator)) {
				t.Fatalf("layer entry %q escapes the root", hdr.Name)
			}
			mode := os.FileMode(hdr.Mode & 0o777)
			switch hdr.Typeflag {
			case tar.TypeDir:
				if err := os.MkdirAll(target, mode); err != nil {
					t.Fatal(err)
				}
			case tar.TypeReg:
				data, err := io.ReadAll(tr)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(target, data, mode); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("layer entry %q has type %q; the image holds only files and folders", hdr.Name, hdr.Typeflag)
			}
			// The exact mode: the umask narrows what Mkdir and WriteFile set,
			// and the sticky bit of /tmp needs Chmod.
			if err := os.Chmod(target, mode|stickyBit(hdr.Mode)); err != nil {
				t.Fatal(err)
			}
			if os.Geteuid() == 0 {
				if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
					t.Fatal(err)
				}
			}
		})
		if _, err := io.Copy(io.Discard, zr); err != nil {
			t.Fatal(err)
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != img.config.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: uncompressed digest %s, config diff_id %s", i, got, img.config.RootFS.DiffIDs[i])
		}
	}
	return names
}

// eachTarEntry calls fn for every entry of a tar stream, with a reader of its
// contents.
func eachTarEntry(t testing.TB, r io.Reader, fn func(*tar.Header, io.Reader)) {
	t.Helper()
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		fn(hdr, tr)
	}
}

func stickyBit(mode int64) os.FileMode {
	if mode&0o1000 != 0 {
		return os.ModeSticky
	}
	return 0
}

// TestImage checks the manager image that `make release` (and `make image`)
// builds: its layout and config, a filesystem of exactly the expected files
// with a static /manager and no shell, and a docker-archive tarball holding
// the same image. The "runs" subtest starts /manager from the unpacked
// filesystem, as the image's user, against a real control plane.
func TestImage(t *testing.T) {
	t.Parallel()
	rel := release(t)
	img := readOCILayout(t, filepath.Join(rel.dist, "image", "oci"))

	if img.digest != rel.digest {
		t.Errorf("OCI layout holds manifest %s, hack/image printed %s", img.digest, rel.digest)
	}
	if want := releaseRepo + ":" + releaseVersion; img.refName != want {
		t.Errorf("OCI layout ref.name %q, want %q", img.refName, want)
	}
	c := img.config
	if c.OS != "linux" || c.Architecture != "amd64" {
		t.Errorf("platform %s/%s, want linux/amd64", c.OS, c.Architecture)
	}
	// The Deployments set runAsNonRoot without runAsUser: the kubelet admits
	// the pod only for a numeric, non-zero user in the image.
	if c.Config.User != "65532:65532" {
		t.Errorf("config User %q, want 65532:65532", c.Config.User)
	}
	if !slices.Equal(c.Config.Entrypoint, []string{"/manager"}) || len(c.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want [/manager] and no cmd", c.Config.Entrypoint, c.Config.Cmd)
	}
	for k, want := range map[string]string{
		"org.opencontainers.image.source":   "https://github.com/tokenkeeper/tokenkeeper",
		"org.opencontainers.image.version":  releaseVersion,
		"org.opencontainers.image.revision": releaseRevision,
	} {
		if got := c.Config.Labels[k]; got != want {
			t.Errorf("label %s=%q, want %q", k, got, want)
		}
	}
	epoch, _ := strconv.ParseInt(releaseEpoch, 10, 64)
	if c.Created != time.Unix(epoch, 0).UTC().Format(time.RFC3339) {
		t.Errorf("created %q, want SOURCE_DATE_EPOCH %s", c.Created, releaseEpoch)
	}

	rootfs := filepath.Join(t.TempDir(), "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	files := img.unpack(t, rootfs)
	slices.Sort(files)
	wantFiles := []string{"etc/", "etc/group", "etc/passwd", "etc/ssl/", "etc/ssl/certs/", "etc/ssl/certs/ca-certificates.crt",
		"home/", "home/nonroot/", "manager", "tmp/"}
	if !slices.Equal(files, wantFiles) {
		t.Errorf("image files %q, want exactly %q (no shell, no package manager)", files, wantFiles)
	}
	checkStatic(t, filepath.Join(rootfs, "manager"))
	if fi, err := os.Stat(filepath.Join(rootfs, "tmp")); err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("/tmp: %v %v, want drwxrwxrwt", fi.Mode(), err)
	}
	passwd, _ := os.ReadFile(filepath.Join(rootfs, "etc", "passwd"))
	if !strings.Contains(string(passwd), "nonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd has no nonroot user 65532:\n%s", passwd)
	}
	ca, _ := os.ReadFile(filepath.Join(rootfs, "etc", "ssl", "certs", "ca-certificates.crt"))
	if n := strings.Count(string(ca), "-----BEGIN CERTIFICATE-----"); n < 100 {
		t.Errorf("CA bundle holds %d certificates, want Mozilla's roots (over 100)", n)
	}

	t.Run("docker-archive", func(t *testing.T) {
		checkDockerArchive(t, filepath.Join(rel.dist, "image", "tokenkeeper-"+releaseVersion+".tar"), img)
	})
	t.Run("runs", func(t *testing.T) {
		runImage(t, rootfs, img)
	})
}

// checkStatic fails unless file is a statically linked amd64 ELF executable:
// the image has no dynamic loader or libc for anything else.
func checkStatic(t *testing.T, file string) {
	t.Helper()
	f, err := elf.Open(file)
	if err != nil {
		t.Fatalf("/manager: %v", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Errorf("/manager: machine %v type %v, want an x86-64 executable", f.Machine, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("/manager is dynamically linked (program header %v)", p.Type)
		}
	}
}

// checkDockerArchive checks the tarball that docker load, podman load and
// crane push read: one image, tagged <repo>:<version>, whose config and
// layers are byte for byte the OCI layout's (so pushing either gives the
// same digest).
func checkDockerArchive(t *testing.T, file string, img *ociImage) {
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries := map[string][]byte{}
	eachTarEntry(t, f, func(hdr *tar.Header, tr io.Reader) {
		var err error
		if entries[hdr.Name], err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	})
	var manifest []struct {
		Config   string   `json:"Config"`
		RepoTags []string `json:"RepoTags"`
		Layers   []string `json:"Layers"`
	}
	if err := json.Unmarshal(entries["manifest.json"], &manifest); err != nil || len(manifest) != 1 {
		t.Fatalf("manifest.json: %v, %d images (want 1)", err, len(manifest))
	}
	m := manifest[0]
	if want := releaseRepo + ":" + releaseVersion; !slices.Equal(m.RepoTags, []string{want}) {
		t.Errorf("RepoTags %q, want [%s]", m.RepoTags, want)
	}
	if !bytes.Equal(entries[m.Config], img.blobs[img.manifest.Config.Digest]) {
		t.Errorf("config %s differs from the OCI layout's config", m.Config)
	}
	if len(m.Layers) != len(img.manifest.Layers) {
		t.Fatalf("%d layers, the OCI layout has %d", len(m.Layers), len(img.manifest.Layers))
	}
	for i, l := range m.Layers {
		if !bytes.Equal(entries[l], img.blobs[img.manifest.Layers[i].Digest]) {
			t.Errorf("layer %s differs from the OCI layout's layer %d", l, i)
		}
	}
}

// runImage starts /manager from the image's filesystem the way a container
// runtime would: chrooted into it, as the config's user, with the config's
// environment, against a real kube-apiserver. It waits for /readyz, then
// checks the startup log and tokenkeeper_build_info for the release's version
// and revision, and stops the manager with SIGTERM.
func runImage(t *testing.T, rootfs string, img *ociImage) {
	env, _ := startControlPlane(t)
	// The kubeconfig goes where the image's user can read it.
	writeAdminKubeconfig(t, env, "image-test", filepath.Join(rootfs, "tmp", "kubeconfig"))

	probePort, metricsPort := freePort(t), freePort(t)
	args := []string{
		"--leader-elect", "--leader-election-namespace=default",
		"--health-probe-bind-address=127.0.0.1:" + probePort,
		"--metrics-bind-address=127.0.0.1:" + metricsPort,
	}
	entrypoint := img.config.Config.Entrypoint[0]
	cmd := exec.Command(entrypoint, args...)
	cmd.Env = append(slices.Clone(img.config.Config.Env), "HOME=/home/nonroot", "KUBECONFIG=/tmp/kubeconfig")
	cmd.Dir = img.config.Config.WorkingDir
	uid, gid := parseUser(t, img.config.Config.User)
	if os.Geteuid() == 0 {
		if err := os.Chown(filepath.Join(rootfs, "tmp", "kubeconfig"), uid, gid); err != nil {
			t.Fatal(err)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Chroot:     rootfs,
			Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
		}
	} else {
		// Without root there is no chroot or change of user: run the
		// image's binary in place, with the kubeconfig's path outside.
		t.Logf("not root: running %s as uid %d, without chroot", filepath.Join(rootfs, entrypoint), os.Geteuid())
		cmd.Path = filepath.Join(rootfs, entrypoint)
		cmd.Dir = rootfs
		cmd.Env = append(cmd.Env, "KUBECONFIG="+filepath.Join(rootfs, "tmp", "kubeconfig"))
	}
	logs := logFile(t)
	cmd.Stdout, cmd.Stderr = logs.f, logs.f
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s from the image: %v", entrypoint, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	if os.Geteuid() == 0 {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(status), "\nUid:\t65532\t65532\t65532\t65532\n") ||
			!strings.Contains(string(status), "\nGid:\t65532\t65532\t65532\t65532\n") {
			t.Errorf("the manager does not run as 65532:65532:\n%s", status)
		}
	}

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ready := false
	for !ready {
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("the manager exited before /readyz answered: %v\n%s", err, logs)
		case <-ctx.Done():
			t.Fatalf("/readyz did not answer 200 within 2 minutes\n%s", logs)
		case <-time.After(200 * time.Millisecond):
		}
		code, _ := httpGet(ctx, "http://127.0.0.1:"+probePort+"/readyz")
		ready = code == http.StatusOK
	}
	t.Logf("the image's /manager was ready %.1fs after start", time.Since(start).Seconds())

	code, body := httpGet(ctx, "http://127.0.0.1:"+metricsPort+"/metrics")
	wantInfo := fmt.Sprintf(`tokenkeeper_build_info{goversion=%q,revision=%q,version=%q} 1`, runtime.Version(), releaseRevision, releaseVersion)
	if code != http.StatusOK || !strings.Contains(body, wantInfo) {
		t.Errorf("/metrics (HTTP %d) lacks %s", code, wantInfo)
	}
	if !hasStartupLine(logs.String()) {
		t.Errorf("no startup log line with version %s and revision %s:\n%s", releaseVersion, releaseRevision, logs)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Errorf("the manager exited with %v after SIGTERM\n%s", err, logs)
		}
	case <-time.After(time.Minute):
		t.Errorf("the manager did not stop within a minute of SIGTERM\n%s", logs)
	}
}

// hasStartupLine reports whether the manager's JSON log has its "starting
// manager" line with the release's version and revision.
func hasStartupLine(logs string) bool {
	for _, line := range strings.Split(logs, "\n") {
		var entry struct {
			Msg      string `json:"msg"`
			Version  string `json:"version"`
			Revision string `json:"revision"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "starting manager" &&
			entry.Version == releaseVersion && entry.Revision == releaseRevision {
			return true
		}
	}
	return false
}

func parseUser(t *testing.T, user string) (int, int) {
	t.Helper()
	u, g, ok := strings.Cut(user, ":")
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if !ok || err1 != nil || err2 != nil {
		t.Fatalf("image user %q is not uid:gid", user)
	}
	return uid, gid
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func httpGet(ctx context.Context, url string) (int, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// processLog is a file a process writes its output to; String reads it.
type processLog struct{ f *os.File }

func logFile(t *testing.T) processLog {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "output"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return processLog{f}
}

func (l processLog) String() string {
	b, err := os.ReadFile(l.f.Name())
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// TestImageReproducible builds the image a second time with the same inputs,
// into another folder, as `make image` does: the digest and the tarball must
// not change.
func TestImageReproducible(t *testing.T) {
	t.Parallel()
	rel := release(t)
	out := filepath.Join(t.TempDir(), "image")
	start := time.Now()
	cmd := exec.Command("go", "-C", path("hack", "image"), "run", ".", "--root", repoRoot, "--out", out,
		"--repository", releaseRepo, "--version", releaseVersion, "--revision", releaseRevision, "--epoch", releaseEpoch)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("hack/image: %v\n%s", err, stderr.String())
	}
	t.Logf("second image build took %.1fs", time.Since(start).Seconds())
	if got := strings.TrimSpace(string(stdout)); got != rel.digest {
		t.Errorf("second build printed digest %s, first %s: the build is not reproducible", got, rel.digest)
	}
	name := "tokenkeeper-" + releaseVersion + ".tar"
	a, err := os.ReadFile(filepath.Join(rel.dist, "image", name))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, name))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Errorf("the two builds wrote different %s", name)
	}
}
