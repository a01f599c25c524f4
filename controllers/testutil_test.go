package controllers

import (
	"bytes"
	"strings"
	"sync"

	"go.uber.org/zap/zapcore"
)

func zapLevelDebug() zapcore.Level { return zapcore.DebugLevel }

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// leaked returns the secrets that appear in s.
func leaked(s string, secrets []string) []string {
	var out []string
	for _, v := range secrets {
		if len(v) >= 8 && strings.Contains(s, v) {
			out = append(out, v[:4]+"…")
		}
	}
	return out
}
