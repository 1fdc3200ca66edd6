package config

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watch calls onChange each time the content of the file at path changes,
// until ctx ends. It watches the file's directory, not the file: a
// Kubernetes ConfigMap update swaps a symlink (..data) in that directory,
// and editors replace files by renaming over them; neither is a write to the
// file itself. Bursts of events are settled for settle (zero: 100 ms), and
// onChange runs only when the bytes read differ from the last ones seen, so
// touching the file or an unrelated file in the directory does nothing. A
// file that cannot be read counts as a change (onChange reports why).
//
// It returns once the watch is set up; errors setting it up are returned.
// onChange runs on Watch's own goroutine, one call at a time; done is closed
// when that goroutine has ended.
func Watch(ctx context.Context, path string, settle time.Duration, onChange func()) (done <-chan struct{}, err error) {
	if settle <= 0 {
		settle = 100 * time.Millisecond
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("config: watch: %w", err)
	}
	dir := filepath.Dir(path)
	if err := w.Add(dir); err != nil {
		w.Close()
		return nil, fmt.Errorf("config: watch %s: %w", dir, err)
	}
	last := digest(path)
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		defer w.Close()
		timer := time.NewTimer(settle)
		timer.Stop()
		defer timer.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-w.Events:
				if !ok {
					return
				}
				timer.Reset(settle)
			case _, ok := <-w.Errors:
				if !ok {
					return
				}
				// An overflowed event queue loses events: look anyway.
				timer.Reset(settle)
			case <-timer.C:
				d := digest(path)
				if !bytes.Equal(d, last) {
					last = d
					onChange()
				}
			}
		}
	}()
	return ch, nil
}

// digest is the hash of path's content, or of the error reading it.
func digest(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		b = []byte("error: " + err.Error())
	}
	h := sha256.Sum256(b)
	return h[:]
}
