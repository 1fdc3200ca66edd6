package config_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/config"
)

// configMap lays dir out as the kubelet does and swaps ..data to a new
// directory holding content, as a ConfigMap update does.
func configMap(t *testing.T, dir, content string) {
	t.Helper()
	ts, err := os.MkdirTemp(dir, "..ts_")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ts, "dingproxy.yaml"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	if err := os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if old != "" {
		os.RemoveAll(filepath.Join(dir, old))
	}
	link := filepath.Join(dir, "dingproxy.yaml")
	if _, err := os.Lstat(link); os.IsNotExist(err) {
		if err := os.Symlink(filepath.Join("..data", "dingproxy.yaml"), link); err != nil {
			t.Fatal(err)
		}
	}
}

func expect(t *testing.T, changes <-chan struct{}, want bool, what string) {
	t.Helper()
	wait := 3 * time.Second
	if !want {
		wait = 400 * time.Millisecond // several settle periods: a change would have fired
	}
	select {
	case <-changes:
		if !want {
			t.Fatalf("%s: onChange ran", what)
		}
	case <-time.After(wait):
		if want {
			t.Fatalf("%s: onChange did not run", what)
		}
	}
}

func TestWatchSeesConfigMapSwapsAndEdits(t *testing.T) {
	dir := t.TempDir()
	configMap(t, dir, "listen: 127.0.0.1:8080\n")
	path := filepath.Join(dir, "dingproxy.yaml")
	changes := make(chan struct{}, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done, err := config.Watch(ctx, path, 60*time.Millisecond, func() { changes <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("the watcher did not stop")
		}
	}()

	configMap(t, dir, "listen: 127.0.0.1:8081\n")
	expect(t, changes, true, "ConfigMap symlink swap")

	configMap(t, dir, "listen: 127.0.0.1:8081\n") // same content, new directory
	expect(t, changes, false, "swap to identical content")

	if err := os.WriteFile(filepath.Join(dir, "unrelated"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	expect(t, changes, false, "unrelated file in the directory")

	// An editor's save: write beside, rename over.
	plain := filepath.Join(dir, "plain.yaml")
	// Atomically: a pause between a remove and a write would show the
	// watcher a missing file, then an empty one, each a change of its own.
	if err := os.WriteFile(plain, []byte("listen: 127.0.0.1:9000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(plain, path); err != nil {
		t.Fatal(err)
	}
	expect(t, changes, true, "symlink replaced by a file")
	if err := os.WriteFile(plain, []byte("listen: 127.0.0.1:9001\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(plain, path); err != nil {
		t.Fatal(err)
	}
	expect(t, changes, true, "rename over the file")

	// A burst of writes settles into one call.
	burst := time.Now()
	for i := range 5 {
		if err := os.WriteFile(path, []byte("listen: 127.0.0.1:900"+string(rune('2'+i))+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(burst)
	expect(t, changes, true, "burst of writes")
	// Writes spread over more than the settle period (a pause of a loaded
	// machine inside the loop) are two bursts, rightly: not checked then.
	if took < 30*time.Millisecond {
		expect(t, changes, false, "the rest of the burst")
	} else {
		t.Logf("the burst took %v, longer than half the settle period: the rest is not checked", took)
	}
}

func TestWatchMissingDirectory(t *testing.T) {
	_, err := config.Watch(context.Background(), filepath.Join(t.TempDir(), "nope", "x.yaml"), 0, func() {})
	if err == nil {
		t.Fatal("watching a missing directory succeeded")
	}
}
