package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSecretFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const secret = "s3cr3t-from-a-file"
	cases := []struct {
		name    string
		env     map[string]string
		wantErr string // "" for success
	}{
		{"file with newline", map[string]string{"DINGPROXY_APP_KEY": "k", "DINGPROXY_APP_SECRET_FILE": write("a", secret+"\n")}, ""},
		{"file with CRLF", map[string]string{"DINGPROXY_APP_KEY": "k", "DINGPROXY_APP_SECRET_FILE": write("b", secret+"\r\n")}, ""},
		{"file without newline", map[string]string{"DINGPROXY_APP_KEY": "k", "DINGPROXY_APP_SECRET_FILE": write("c", secret)}, ""},
		{"both set", map[string]string{"DINGPROXY_APP_KEY": "k", "DINGPROXY_APP_SECRET": "x", "DINGPROXY_APP_SECRET_FILE": write("d", secret)}, "app.secret_file: set app.secret or app.secret_file, not both"},
		{"missing file", map[string]string{"DINGPROXY_APP_KEY": "k", "DINGPROXY_APP_SECRET_FILE": filepath.Join(dir, "nope")}, "app.secret_file: cannot read"},
		{"empty file", map[string]string{"DINGPROXY_APP_KEY": "k", "DINGPROXY_APP_SECRET_FILE": write("e", "\n")}, "must hold the secret on one line"},
		{"two lines", map[string]string{"DINGPROXY_APP_KEY": "k", "DINGPROXY_APP_SECRET_FILE": write("f", secret+"\nmore\n")}, "must hold the secret on one line"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			cfg, err := Load("")
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if cfg.App.Secret.Reveal() != secret {
					t.Errorf("secret = %q, want the file's", cfg.App.Secret.Reveal())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("Load error = %v, want %q", err, c.wantErr)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("the error shows the file's content: %v", err)
			}
		})
	}
}
