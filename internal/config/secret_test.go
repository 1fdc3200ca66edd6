package config

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testSecret = "s3cr3t-Val-4b9f"

func assertNoSecret(t *testing.T, what, s string) {
	t.Helper()
	if strings.Contains(s, testSecret) {
		t.Errorf("%s leaks the secret: %s", what, s)
	}
}

func TestSecretNeverPrints(t *testing.T) {
	t.Parallel()
	c := Default()
	c.App = App{Key: "k", Secret: testSecret}
	if c.App.Secret.Reveal() != testSecret {
		t.Fatalf("Reveal() = %q, want the secret", c.App.Secret.Reveal())
	}

	for _, verb := range []string{"%v", "%s", "%+v", "%#v", "%q", "%x"} {
		for name, v := range map[string]any{"Config": c, "*Config": &c, "App": c.App, "Secret": c.App.Secret} {
			assertNoSecret(t, fmt.Sprintf("fmt %s of %s", verb, name), fmt.Sprintf(verb, v))
		}
	}
	for name, v := range map[string]any{"Config": c, "*Config": &c, "Secret": c.App.Secret} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("json.Marshal(%s): %v", name, err)
		}
		assertNoSecret(t, "json.Marshal of "+name, string(b))
		if !strings.Contains(string(b), Redacted) {
			t.Errorf("json.Marshal of %s = %s, want %s in it", name, b, Redacted)
		}
	}

	// Validation errors, including the one about the secret itself.
	c.App.Key = ""
	c.Upstreams.API = "nope"
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate = nil, want errors")
	}
	assertNoSecret(t, "Validate error", err.Error())
	if !strings.Contains(err.Error(), "app.key: must be set when app.secret is set") {
		t.Errorf("Validate error %q lacks the app.key problem", err)
	}
}

// Load's errors never show the secret, wherever it was put.
func TestSecretNotInLoadErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml, want string
	}{
		{"secret as list", "app:\n  key: k\n  secret: [" + testSecret + "]\n",
			"app.secret: cannot parse value as string"},
		{"secret as map", "app:\n  key: k\n  secret: {" + testSecret + ": x}\n",
			"app.secret: cannot parse value as string"},
		{"secret under a misspelt key", "app:\n  secrte: " + testSecret + "\n",
			"app.secrte: unknown key"},
		{"secret without key", "app:\n  secret: " + testSecret + "\n",
			"app.key: must be set when app.secret is set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			assertNoSecret(t, "Load error", err.Error())
			if err.Error() != tt.want {
				t.Errorf("Load error = %q, want %q", err, tt.want)
			}
		})
	}
}

func TestSecretFromEnvNotInErrorsOrOutput(t *testing.T) {
	t.Setenv("DINGPROXY_APP_SECRET", testSecret)
	_, err := Load("")
	if err == nil {
		t.Fatal("Load with a secret and no key succeeded")
	}
	assertNoSecret(t, "Load error", err.Error())

	t.Setenv("DINGPROXY_APP_KEY", "k")
	c, err := Load("")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.App.Secret.Reveal() != testSecret {
		t.Errorf("secret not loaded from DINGPROXY_APP_SECRET")
	}
	assertNoSecret(t, "%+v of the loaded config", fmt.Sprintf("%+v", c))
	b, _ := json.Marshal(c)
	assertNoSecret(t, "JSON of the loaded config", string(b))
}
