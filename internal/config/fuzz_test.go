package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad: any file is loaded without panicking; what loads is valid, and
// what does not load says why. Seed corpus: testdata/fuzz/FuzzLoad, plus
// every file in testdata.
func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.yaml")
	for _, p := range seeds {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	if b, err := os.ReadFile("../../configs/dingproxy.yaml"); err == nil {
		f.Add(b)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "fuzz.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(path)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error with no message")
			}
			return
		}
		if verr := cfg.Validate(); verr != nil {
			t.Fatalf("Load accepted a configuration Validate refuses: %v", verr)
		}
	})
}
