// Package deploy_test checks the deployment files: the Kubernetes manifests
// under k8s/, the Dockerfile at the repository root and the Grafana dashboard.
package deploy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

const (
	sidecarName  = "dingproxy"
	configKey    = "dingproxy.yaml"
	adminPortKey = "admin"
)

// manifest is one YAML document of a file under k8s/.
type manifest struct {
	file string
	node *yaml.Node
	head header
}

type header struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   meta   `yaml:"metadata"`
}

type meta struct {
	Name        string            `yaml:"name"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type deployment struct {
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata meta    `yaml:"metadata"`
			Spec     podSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int64      `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               *runAs      `yaml:"securityContext"`
	InitContainers                []container `yaml:"initContainers"`
	Containers                    []container `yaml:"containers"`
	Volumes                       []struct {
		Name      string `yaml:"name"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
		EmptyDir *struct {
			Medium    string `yaml:"medium"`
			SizeLimit string `yaml:"sizeLimit"`
		} `yaml:"emptyDir"`
		PersistentVolumeClaim *struct {
			ClaimName string `yaml:"claimName"`
		} `yaml:"persistentVolumeClaim"`
	} `yaml:"volumes"`
}

type container struct {
	Name          string   `yaml:"name"`
	Image         string   `yaml:"image"`
	RestartPolicy string   `yaml:"restartPolicy"`
	Args          []string `yaml:"args"`
	Env           []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name     string `yaml:"name"`
				Key      string `yaml:"key"`
				Optional bool   `yaml:"optional"`
			} `yaml:"secretKeyRef"`
			ResourceFieldRef *struct {
				ContainerName string `yaml:"containerName"`
				Resource      string `yaml:"resource"`
				Divisor       any    `yaml:"divisor"` // a number or a quantity
			} `yaml:"resourceFieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	StartupProbe   *probe `yaml:"startupProbe"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext *struct {
		runAs                    `yaml:",inline"`
		RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
		SeccompProfile struct {
			Type string `yaml:"type"`
		} `yaml:"seccompProfile"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

// runAs is the user and group of a pod's or a container's securityContext.
type runAs struct {
	RunAsUser  *int64 `yaml:"runAsUser"`
	RunAsGroup *int64 `yaml:"runAsGroup"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"` // a number or a port name
	} `yaml:"httpGet"`
}

// port returns the container port named or numbered p, or 0.
func (c *container) port(p any) int {
	switch p := p.(type) {
	case int:
		return p
	case string:
		for _, cp := range c.Ports {
			if cp.Name == p {
				return cp.ContainerPort
			}
		}
		if n, err := strconv.Atoi(p); err == nil {
			return n
		}
	}
	return 0
}

// readManifests decodes every document of every k8s/*.yaml file, failing on
// any parse error or on a document without apiVersion, kind or metadata.name.
func readManifests(t *testing.T) []manifest {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("k8s", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no k8s/*.yaml files")
	}
	var ms []manifest
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for i := 0; ; i++ {
			var n yaml.Node
			err := dec.Decode(&n)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: document %d: %v", f, i, err)
			}
			if len(n.Content) == 0 || n.Content[0].Kind == yaml.ScalarNode && n.Content[0].Tag == "!!null" {
				continue // an empty document, e.g. after a trailing ---
			}
			m := manifest{file: f, node: &n}
			if err := n.Decode(&m.head); err != nil {
				t.Fatalf("%s: document %d: %v", f, i, err)
			}
			if m.head.APIVersion == "" || m.head.Kind == "" || m.head.Metadata.Name == "" {
				t.Errorf("%s: document %d: apiVersion %q, kind %q, metadata.name %q: all are required",
					f, i, m.head.APIVersion, m.head.Kind, m.head.Metadata.Name)
			}
			ms = append(ms, m)
		}
	}
	return ms
}

// fleetFiles hold the shared mode's Redis and its Secret: the app's
// manifests are the others.
var fleetFiles = []string{"redis.yaml", "secret-fleet.yaml"}

func isFleet(m manifest) bool { return slices.Contains(fleetFiles, filepath.Base(m.file)) }

// only decodes the one document of kind of the app's manifests (not the
// fleet's) into v, and returns its header.
func only(t *testing.T, ms []manifest, kind string, v any) header {
	t.Helper()
	var found []manifest
	for _, m := range ms {
		if m.head.Kind == kind && !isFleet(m) {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want exactly one %s, found %d", kind, len(found))
	}
	if err := found[0].node.Decode(v); err != nil {
		t.Fatalf("%s: %s: %v", found[0].file, kind, err)
	}
	return found[0].head
}

func TestManifestsParse(t *testing.T) {
	ms := readManifests(t)
	kinds := map[string]bool{}
	for _, m := range ms {
		kinds[m.head.Kind] = true
	}
	for _, k := range []string{"ConfigMap", "Secret", "Deployment", "Service", "ServiceMonitor"} {
		if !kinds[k] {
			t.Errorf("no %s in k8s/", k)
		}
	}
}

// setup is what several tests need from the manifests.
type setup struct {
	ms      []manifest
	dep     deployment
	pod     *podSpec
	sidecar *container
	admin   int // the sidecar's admin container port
}

func load(t *testing.T) *setup {
	t.Helper()
	s := &setup{ms: readManifests(t)}
	only(t, s.ms, "Deployment", &s.dep)
	s.pod = &s.dep.Spec.Template.Spec
	for i := range s.pod.InitContainers {
		if s.pod.InitContainers[i].Name == sidecarName {
			s.sidecar = &s.pod.InitContainers[i]
		}
	}
	if s.sidecar == nil {
		for _, c := range s.pod.Containers {
			if c.Name == sidecarName {
				t.Fatalf("%s is under containers: it must be a native sidecar, under initContainers", sidecarName)
			}
		}
		t.Fatalf("no initContainer named %s", sidecarName)
	}
	s.admin = s.sidecar.port(adminPortKey)
	if s.admin == 0 {
		t.Fatalf("sidecar has no container port named %q", adminPortKey)
	}
	return s
}

func TestDeploymentSidecar(t *testing.T) {
	s := load(t)
	c := s.sidecar
	if c.RestartPolicy != "Always" {
		t.Errorf("sidecar restartPolicy = %q, want Always (a native sidecar)", c.RestartPolicy)
	}
	if c.Image == "" {
		t.Error("sidecar has no image")
	}
	if len(s.pod.Containers) == 0 {
		t.Error("the pod has no app container")
	}

	checkProbe := func(name string, p *probe, wantPath string, required bool) {
		t.Helper()
		if p == nil {
			if required {
				t.Errorf("sidecar has no %s", name)
			}
			return
		}
		if p.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe", name)
			return
		}
		if p.HTTPGet.Path != wantPath {
			t.Errorf("%s path = %q, want %q", name, p.HTTPGet.Path, wantPath)
		}
		if got := c.port(p.HTTPGet.Port); got != s.admin {
			t.Errorf("%s port %v is %d, want the admin port %d", name, p.HTTPGet.Port, got, s.admin)
		}
	}
	checkProbe("readinessProbe", c.ReadinessProbe, "/readyz", true)
	checkProbe("livenessProbe", c.LivenessProbe, "/healthz", true)
	checkProbe("startupProbe", c.StartupProbe, "/readyz", false)

	for _, r := range []string{"cpu", "memory"} {
		if c.Resources.Requests[r] == "" {
			t.Errorf("sidecar resources.requests.%s not set", r)
		}
	}
	if c.Resources.Limits["memory"] == "" {
		t.Error("sidecar resources.limits.memory not set")
	}

	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("sidecar has no securityContext")
	}
	isTrue := func(b *bool) bool { return b != nil && *b }
	if !isTrue(sc.RunAsNonRoot) || !isTrue(sc.ReadOnlyRootFilesystem) {
		t.Error("sidecar securityContext: want runAsNonRoot and readOnlyRootFilesystem true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("sidecar securityContext: want allowPrivilegeEscalation false")
	}
	if len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("sidecar capabilities.drop = %v, want [ALL]", sc.Capabilities.Drop)
	}
	if sc.SeccompProfile.Type != "RuntimeDefault" {
		t.Errorf("sidecar seccompProfile.type = %q, want RuntimeDefault", sc.SeccompProfile.Type)
	}
}

func TestDeploymentCredentialsFromSecret(t *testing.T) {
	s := load(t)
	var secret struct {
		StringData map[string]string `yaml:"stringData"`
		Data       map[string]string `yaml:"data"`
	}
	sh := only(t, s.ms, "Secret", &secret)
	for _, name := range []string{"DINGPROXY_APP_KEY", "DINGPROXY_APP_SECRET"} {
		found := false
		for _, e := range s.sidecar.Env {
			if e.Name != name {
				continue
			}
			found = true
			if e.Value != "" {
				t.Errorf("%s has a literal value: it must come from the Secret", name)
			}
			if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				t.Errorf("%s: want valueFrom.secretKeyRef", name)
				continue
			}
			ref := e.ValueFrom.SecretKeyRef
			if ref.Name != sh.Metadata.Name {
				t.Errorf("%s: secretKeyRef.name = %q, want the Secret %q", name, ref.Name, sh.Metadata.Name)
			}
			_, inString := secret.StringData[ref.Key]
			_, inData := secret.Data[ref.Key]
			if !inString && !inData {
				t.Errorf("%s: secretKeyRef.key %q is not in the Secret", name, ref.Key)
			}
		}
		if !found {
			t.Errorf("sidecar env has no %s", name)
		}
	}
}

func TestDeploymentPrometheusAnnotations(t *testing.T) {
	s := load(t)
	a := s.dep.Spec.Template.Metadata.Annotations
	if a["prometheus.io/scrape"] != "true" {
		t.Errorf(`prometheus.io/scrape = %q, want "true"`, a["prometheus.io/scrape"])
	}
	if a["prometheus.io/path"] != "/metrics" {
		t.Errorf("prometheus.io/path = %q, want /metrics", a["prometheus.io/path"])
	}
	if a["prometheus.io/port"] != strconv.Itoa(s.admin) {
		t.Errorf("prometheus.io/port = %q, want the admin port %d", a["prometheus.io/port"], s.admin)
	}
}

// configPath returns the sidecar's -config argument.
func configPath(t *testing.T, c *container) string {
	t.Helper()
	for i, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "-config="); ok {
			return v
		}
		if a == "-config" && i+1 < len(c.Args) {
			return c.Args[i+1]
		}
	}
	t.Fatalf("sidecar args %q have no -config", c.Args)
	return ""
}

func TestDeploymentConfigMount(t *testing.T) {
	s := load(t)
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	ch := only(t, s.ms, "ConfigMap", &cm)
	vol := ""
	for _, v := range s.pod.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == ch.Metadata.Name {
			vol = v.Name
		}
	}
	if vol == "" {
		t.Fatalf("no volume of ConfigMap %q", ch.Metadata.Name)
	}
	cfgPath := configPath(t, s.sidecar)
	mounted := false
	for _, m := range s.sidecar.VolumeMounts {
		if m.Name != vol {
			continue
		}
		mounted = true
		if m.SubPath != "" {
			t.Errorf("config volume mounted with subPath %q: a subPath mount never sees ConfigMap updates", m.SubPath)
		}
		if !m.ReadOnly {
			t.Error("config volume should be mounted readOnly")
		}
		if dir := path.Dir(cfgPath); path.Clean(m.MountPath) != dir {
			t.Errorf("config volume mounted at %q, but -config reads %q", m.MountPath, cfgPath)
		}
	}
	if !mounted {
		t.Fatalf("sidecar does not mount volume %q", vol)
	}
	if _, ok := cm.Data[path.Base(cfgPath)]; !ok {
		t.Errorf("-config reads %q, but ConfigMap has no key %q", cfgPath, path.Base(cfgPath))
	}
}

func TestServiceAndServiceMonitor(t *testing.T) {
	s := load(t)
	var svc struct {
		Spec struct {
			Selector map[string]string `yaml:"selector"`
			Ports    []struct {
				Name       string `yaml:"name"`
				Port       int    `yaml:"port"`
				TargetPort any    `yaml:"targetPort"`
			} `yaml:"ports"`
		} `yaml:"spec"`
	}
	sh := only(t, s.ms, "Service", &svc)
	if len(svc.Spec.Selector) == 0 {
		t.Error("Service has no selector")
	}
	podLabels := s.dep.Spec.Template.Metadata.Labels
	for k, v := range svc.Spec.Selector {
		if podLabels[k] != v {
			t.Errorf("Service selector %s=%s does not match the pod's labels %v", k, v, podLabels)
		}
	}
	found := false
	for _, p := range svc.Spec.Ports {
		if p.Name != adminPortKey {
			continue
		}
		found = true
		target := p.TargetPort
		if target == nil {
			target = p.Port
		}
		// A number: a named targetPort on an init container (a native
		// sidecar) is not resolved by the clusters the README supports.
		n, ok := target.(int)
		if !ok {
			t.Errorf("Service port %q targets %q: want the admin container port's number %d, not a name", p.Name, target, s.admin)
		} else if n != s.admin {
			t.Errorf("Service port %q targets %d, want the admin container port %d", p.Name, n, s.admin)
		}
	}
	if !found {
		t.Errorf("Service has no port named %q", adminPortKey)
	}

	var sm struct {
		Spec struct {
			Selector struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			} `yaml:"selector"`
			Endpoints []struct {
				Port     string `yaml:"port"`
				Path     string `yaml:"path"`
				Interval string `yaml:"interval"`
			} `yaml:"endpoints"`
		} `yaml:"spec"`
	}
	mh := only(t, s.ms, "ServiceMonitor", &sm)
	if mh.APIVersion != "monitoring.coreos.com/v1" {
		t.Errorf("ServiceMonitor apiVersion = %q", mh.APIVersion)
	}
	if len(sm.Spec.Selector.MatchLabels) == 0 {
		t.Error("ServiceMonitor selects no labels")
	}
	for k, v := range sm.Spec.Selector.MatchLabels {
		if sh.Metadata.Labels[k] != v {
			t.Errorf("ServiceMonitor selector %s=%s does not match the Service's labels %v", k, v, sh.Metadata.Labels)
		}
	}
	if len(sm.Spec.Endpoints) != 1 {
		t.Fatalf("ServiceMonitor has %d endpoints, want 1", len(sm.Spec.Endpoints))
	}
	if e := sm.Spec.Endpoints[0]; e.Port != adminPortKey || e.Path != "/metrics" || e.Interval == "" {
		t.Errorf("ServiceMonitor endpoint = %+v, want port %q, path /metrics and an interval", e, adminPortKey)
	}
}

// readmeLabelsHeading is the k8s README's section that names the labels a
// user's pod template must carry.
const readmeLabelsHeading = "## What to copy into your pod template"

// readmePodLabels returns the labels of the first yaml block in the k8s
// README's section readmeLabelsHeading.
func readmePodLabels(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("k8s", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n"+readmeLabelsHeading+"\n")
	if !ok {
		t.Fatalf("k8s/README.md has no section %q", readmeLabelsHeading)
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	_, block, ok := strings.Cut(section, "```yaml\n")
	if !ok {
		t.Fatalf("k8s/README.md, %q: no yaml block", readmeLabelsHeading)
	}
	block, _, ok = strings.Cut(block, "```")
	if !ok {
		t.Fatalf("k8s/README.md, %q: the yaml block is not closed", readmeLabelsHeading)
	}
	var doc struct {
		Metadata meta `yaml:"metadata"`
	}
	if err := yaml.Unmarshal([]byte(block), &doc); err != nil {
		t.Fatalf("k8s/README.md, %q: %v", readmeLabelsHeading, err)
	}
	if len(doc.Metadata.Labels) == 0 {
		t.Fatalf("k8s/README.md, %q: the yaml block names no metadata.labels", readmeLabelsHeading)
	}
	return doc.Metadata.Labels
}

// The labels the README tells users to put on their pod template are
// exactly those the metrics Service selects on, and the example Deployment
// carries them: a user who follows the README gets scraped.
func TestReadmeNamesTheServiceSelector(t *testing.T) {
	s := load(t)
	var svc struct {
		Spec struct {
			Selector map[string]string `yaml:"selector"`
		} `yaml:"spec"`
	}
	only(t, s.ms, "Service", &svc)
	want := readmePodLabels(t)
	if !maps.Equal(svc.Spec.Selector, want) {
		t.Errorf("the Service selects %v, but k8s/README.md (%q) tells users to copy %v", svc.Spec.Selector, readmeLabelsHeading, want)
	}
	podLabels := s.dep.Spec.Template.Metadata.Labels
	for k, v := range want {
		if got, ok := podLabels[k]; !ok || got != v {
			t.Errorf("the example Deployment's pod template lacks the README's label %s: %q", k, v)
		}
	}
}

// serviceLinkEnv is what kubelet puts in the environment of every container
// of the namespace for a Service (unless the pod sets enableServiceLinks:
// false): NAME_SERVICE_HOST, NAME_SERVICE_PORT, NAME_SERVICE_PORT_<port name>,
// and the Docker-link NAME_PORT, NAME_PORT_<port>_<PROTO> and its _PROTO,
// _PORT and _ADDR, NAME being the Service's name upper-cased with dashes as
// underscores.
func serviceLinkEnv(name, ip string, ports []servicePort) map[string]string {
	env := map[string]string{}
	if len(ports) == 0 {
		return env
	}
	up := func(s string) string { return strings.ToUpper(strings.ReplaceAll(s, "-", "_")) }
	n := up(name)
	proto := func(p servicePort) string {
		if p.Protocol == "" {
			return "TCP"
		}
		return strings.ToUpper(p.Protocol)
	}
	env[n+"_SERVICE_HOST"] = ip
	env[n+"_SERVICE_PORT"] = strconv.Itoa(ports[0].Port)
	env[n+"_PORT"] = fmt.Sprintf("%s://%s:%d", strings.ToLower(proto(ports[0])), ip, ports[0].Port)
	for _, p := range ports {
		if p.Name != "" {
			env[n+"_SERVICE_PORT_"+up(p.Name)] = strconv.Itoa(p.Port)
		}
		pre := fmt.Sprintf("%s_PORT_%d_%s", n, p.Port, proto(p))
		env[pre] = fmt.Sprintf("%s://%s:%d", strings.ToLower(proto(p)), ip, p.Port)
		env[pre+"_PROTO"] = strings.ToLower(proto(p))
		env[pre+"_PORT"] = strconv.Itoa(p.Port)
		env[pre+"_ADDR"] = ip
	}
	return env
}

type servicePort struct {
	Name     string `yaml:"name"`
	Port     int    `yaml:"port"`
	Protocol string `yaml:"protocol"`
}

// The manifests' Services are named dingproxy-*, so kubelet gives the
// sidecar DINGPROXY_METRICS_SERVICE_HOST, DINGPROXY_REDIS_PORT and the like.
// dingproxy refuses a DINGPROXY_* variable that is no key's: these must not
// be refused, or the sidecar would not start next to its own Services.
func TestServiceVariablesDoNotStopTheSidecar(t *testing.T) {
	clearEnv(t)
	s := load(t)
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	only(t, s.ms, "ConfigMap", &cm)
	file := filepath.Join(t.TempDir(), configKey)
	if err := os.WriteFile(file, []byte(cm.Data[configKey]), 0o600); err != nil {
		t.Fatal(err)
	}
	set := 0
	for i, m := range s.ms {
		if m.head.Kind != "Service" {
			continue
		}
		var svc struct {
			Spec struct {
				Ports []servicePort `yaml:"ports"`
			} `yaml:"spec"`
		}
		if err := m.node.Decode(&svc); err != nil {
			t.Fatalf("%s: %v", m.file, err)
		}
		for k, v := range serviceLinkEnv(m.head.Metadata.Name, fmt.Sprintf("10.96.0.%d", 10+i), svc.Spec.Ports) {
			t.Setenv(k, v)
			if strings.HasPrefix(k, "DINGPROXY_") {
				set++
			}
		}
	}
	if set == 0 {
		t.Fatal("no Service named dingproxy-*: nothing tested")
	}
	if _, err := config.Load(file); err != nil {
		t.Errorf("with the variables kubelet sets for the manifests' Services, the sidecar would not start:\n%v", err)
	}
}

// clearEnv unsets every DINGPROXY_* variable for the test: config.Load reads
// them over the file. An empty variable counts as unset.
func clearEnv(t *testing.T) {
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "DINGPROXY_") {
			t.Setenv(name, "")
		}
	}
}

func TestConfigMapValidates(t *testing.T) {
	clearEnv(t)
	s := load(t)
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	only(t, s.ms, "ConfigMap", &cm)
	text, ok := cm.Data[configKey]
	if !ok {
		t.Fatalf("ConfigMap has no key %q", configKey)
	}
	file := filepath.Join(t.TempDir(), configKey)
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatalf("ConfigMap's %s does not validate:\n%v", configKey, err)
	}

	// No credentials in the ConfigMap: they come from the Secret.
	if cfg.App.Key != "" || cfg.App.Secret.Reveal() != "" {
		t.Error("ConfigMap sets app.key or app.secret: credentials belong in the Secret")
	}
	var raw map[string]any
	if err := yaml.Unmarshal([]byte(text), &raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := raw["app"]; ok {
		t.Error("ConfigMap has an app section: credentials belong in the Secret")
	}
	var secret struct {
		StringData map[string]string `yaml:"stringData"`
	}
	only(t, s.ms, "Secret", &secret)
	for k, v := range secret.StringData {
		if v != "" && strings.Contains(text, v) {
			t.Errorf("ConfigMap contains the Secret's %s value", k)
		}
	}

	// The admin endpoints are where the probes and Prometheus look.
	host, port, err := net.SplitHostPort(cfg.AdminListen)
	if err != nil {
		t.Fatal(err)
	}
	if port != strconv.Itoa(s.admin) {
		t.Errorf("admin_listen %q: port is not the admin container port %d", cfg.AdminListen, s.admin)
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		t.Errorf("admin_listen %q: kubelet and Prometheus cannot reach it; listen on all addresses", cfg.AdminListen)
	}

	// The proxy listens on loopback, on the port the app is pointed at.
	host, port, err = net.SplitHostPort(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		t.Errorf("listen %q: want a loopback address (the app shares the pod's network)", cfg.Listen)
	}
	if p := s.sidecar.port("proxy"); strconv.Itoa(p) != port {
		t.Errorf("listen %q: port differs from the proxy container port %d", cfg.Listen, p)
	}
	pointed := false
	for _, c := range s.pod.Containers {
		for _, e := range c.Env {
			if strings.HasPrefix(e.Value, "http://127.0.0.1:"+port) {
				pointed = true
			}
		}
	}
	if !pointed {
		t.Errorf("no app container env points at http://127.0.0.1:%s", port)
	}

	// Kubernetes must not kill the proxy while it drains.
	if g := s.pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= cfg.ShutdownTimeout {
		t.Errorf("terminationGracePeriodSeconds must exceed shutdown_timeout %v", cfg.ShutdownTimeout)
	}

	// The example route keeps work notifications from being sent twice.
	found := false
	for _, r := range cfg.Routes {
		if r.Path == "/topapi/message/corpconversation/asyncsend_v2" {
			found = true
			if r.Idempotent == nil || *r.Idempotent || r.Fallback == nil {
				t.Error("asyncsend_v2 route: want idempotent: false and a fallback")
			}
		}
	}
	if !found {
		t.Error("no route for /topapi/message/corpconversation/asyncsend_v2")
	}
}

// configMapConfig loads the ConfigMap's dingproxy.yaml as dingproxy does.
func configMapConfig(t *testing.T, s *setup) *config.Config {
	t.Helper()
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	only(t, s.ms, "ConfigMap", &cm)
	file := filepath.Join(t.TempDir(), configKey)
	if err := os.WriteFile(file, []byte(cm.Data[configKey]), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatalf("the ConfigMap's %s: %v", configKey, err)
	}
	return cfg
}

// The ConfigMap defers sends, so the outbox must have somewhere to live:
// the sidecar mounts a writable volume exactly at outbox.dir (the root
// filesystem is read-only; anywhere else the proxy would not start), an
// emptyDir on disk (medium Memory would count against the memory limit)
// with room for outbox.max_bytes, or a PersistentVolumeClaim.
func TestOutboxVolume(t *testing.T) {
	clearEnv(t)
	s := load(t)
	cfg := configMapConfig(t, s)
	var deferred []string
	for _, r := range cfg.Routes {
		if r.Defer != nil {
			deferred = append(deferred, r.Path)
		}
	}
	if len(deferred) == 0 {
		t.Fatal("no route of the ConfigMap has defer: the example should show a deferred send route")
	}
	if !path.IsAbs(cfg.Outbox.Dir) {
		t.Fatalf("outbox.dir %q: want an absolute path, the mount path of the outbox volume", cfg.Outbox.Dir)
	}
	vol := ""
	for _, m := range s.sidecar.VolumeMounts {
		if path.Clean(m.MountPath) != path.Clean(cfg.Outbox.Dir) {
			continue
		}
		vol = m.Name
		if m.ReadOnly {
			t.Errorf("the outbox volume %q is mounted readOnly at %s", m.Name, m.MountPath)
		}
		if m.SubPath != "" {
			t.Errorf("the outbox volume %q is mounted with subPath %q", m.Name, m.SubPath)
		}
	}
	if vol == "" {
		t.Fatalf("routes %v defer, but the sidecar mounts no volume at outbox.dir %s (the root filesystem is read-only)", deferred, cfg.Outbox.Dir)
	}
	found := false
	for _, v := range s.pod.Volumes {
		if v.Name != vol {
			continue
		}
		found = true
		switch {
		case v.EmptyDir != nil:
			if strings.EqualFold(v.EmptyDir.Medium, "Memory") {
				t.Errorf("the outbox volume %q is a tmpfs (medium Memory): it counts against the sidecar's memory limit", vol)
			}
			if v.EmptyDir.SizeLimit != "" {
				limit, err := quantityBytes(v.EmptyDir.SizeLimit)
				if err != nil {
					t.Fatalf("outbox volume sizeLimit: %v", err)
				}
				if limit <= int64(cfg.Outbox.MaxBytes) {
					t.Errorf("the outbox volume's sizeLimit %s does not exceed outbox.max_bytes %s: kubelet would evict the pod before the outbox is full",
						v.EmptyDir.SizeLimit, cfg.Outbox.MaxBytes)
				}
			}
		case v.PersistentVolumeClaim != nil:
		default:
			t.Errorf("the outbox volume %q is neither an emptyDir nor a persistentVolumeClaim", vol)
		}
	}
	if !found {
		t.Fatalf("the sidecar mounts volume %q at outbox.dir, but the pod has no such volume", vol)
	}
}

// quantityBytes reads a Kubernetes memory quantity (256Mi, 1G, 268435456)
// as bytes.
func quantityBytes(q string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
		{"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}}
	num, mult := q, int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(q, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("memory quantity %q: want a positive whole number with an optional Ki/Mi/Gi/Ti or k/M/G/T suffix", q)
	}
	return n * mult, nil
}

func TestQuantityBytes(t *testing.T) {
	for q, want := range map[string]int64{"256Mi": 256 << 20, "1Gi": 1 << 30, "512Ki": 512 << 10, "300M": 300e6, "268435456": 268435456} {
		if got, err := quantityBytes(q); err != nil || got != want {
			t.Errorf("quantityBytes(%q) = %d, %v; want %d", q, got, err, want)
		}
	}
	for _, q := range []string{"", "Mi", "-1Mi", "0", "1.5Gi", "256MB"} {
		if got, err := quantityBytes(q); err == nil {
			t.Errorf("quantityBytes(%q) = %d, want an error", q, got)
		}
	}
}

// What the proxy's memory holds beyond its capped buffers and caches.
const (
	// staleCacheBytes is the stale answers' cache in all (internal/proxy's
	// staleMaxBytes; the README: "answers up to 256 KiB are kept, 32 MiB in
	// all"), held only when a route has fallback.stale.
	staleCacheBytes = 32 << 20
	// baselineBytes is everything else: the idle process (about 16 MiB
	// resident, 12 MiB from the Go runtime, measured on the binary with this
	// ConfigMap), net/http's buffers per connection (about 29 MiB with 500
	// uploads in flight, BENCHMARKS "Memory under slow uploads"), goroutine
	// stacks, and room for the collector to work below GOMEMLIMIT.
	baselineBytes = 64 << 20
)

// The sidecar's Go runtime knows the container's memory limit (GOMEMLIMIT,
// in bytes, from limits.memory), and that limit holds everything the proxy
// may keep at once: the request bodies buffered for retries
// (retry.max_buffered_bytes, as the ConfigMap sets it or its default), the
// read cache (proxy.CacheMaxBytes), the stale cache when a route uses it,
// and the baseline.
func TestMemoryLimitHoldsTheCaps(t *testing.T) {
	clearEnv(t)
	s := load(t)
	c := s.sidecar

	// GOMEMLIMIT from the limit, in bytes.
	found := false
	for _, e := range c.Env {
		if e.Name != "GOMEMLIMIT" {
			continue
		}
		found = true
		if e.Value != "" {
			t.Errorf("GOMEMLIMIT has a literal value %q: take it from the container's limit (valueFrom.resourceFieldRef), so the two cannot drift apart", e.Value)
		}
		if e.ValueFrom == nil || e.ValueFrom.ResourceFieldRef == nil {
			t.Fatal("GOMEMLIMIT: want valueFrom.resourceFieldRef")
		}
		ref := e.ValueFrom.ResourceFieldRef
		if ref.Resource != "limits.memory" {
			t.Errorf("GOMEMLIMIT: resourceFieldRef.resource = %q, want limits.memory", ref.Resource)
		}
		if ref.ContainerName != "" && ref.ContainerName != sidecarName {
			t.Errorf("GOMEMLIMIT: resourceFieldRef.containerName = %q, want the sidecar's own (%s, or none)", ref.ContainerName, sidecarName)
		}
		switch d := ref.Divisor; d {
		case nil, 1, "1":
		default:
			t.Errorf("GOMEMLIMIT: resourceFieldRef.divisor = %v: the value would be a bare count of that unit, which Go reads as bytes; leave the divisor out", d)
		}
	}
	if !found {
		t.Fatal("the sidecar has no GOMEMLIMIT: the Go runtime does not know the container's memory limit")
	}

	limitQ := c.Resources.Limits["memory"]
	limit, err := quantityBytes(limitQ)
	if err != nil {
		t.Fatalf("sidecar limits.memory: %v", err)
	}

	// The caps, as the ConfigMap's configuration sets them.
	cfg := configMapConfig(t, s)
	type share struct {
		what  string
		bytes int64
	}
	parts := []share{
		{"retry.max_buffered_bytes", cfg.Retry.MaxBufferedBytes},
		{"read cache (proxy.CacheMaxBytes)", proxy.CacheMaxBytes},
	}
	for _, r := range cfg.Routes {
		if r.Fallback != nil && r.Fallback.Stale > 0 {
			parts = append(parts, share{"stale cache (a route has fallback.stale)", staleCacheBytes})
			break
		}
	}
	parts = append(parts, share{"baseline", baselineBytes})
	var sum int64
	var lines []string
	for _, p := range parts {
		sum += p.bytes
		lines = append(lines, fmt.Sprintf("  %-42s %4d MiB", p.what, p.bytes>>20))
	}
	lines = append(lines, fmt.Sprintf("  %-42s %4d MiB of limits.memory %s", "total", sum>>20, limitQ))
	if sum > limit {
		t.Errorf("the sidecar's memory limit %s (%d MiB) does not hold what the proxy may keep:\n%s", limitQ, limit>>20, strings.Join(lines, "\n"))
	} else {
		t.Logf("memory budget:\n%s", strings.Join(lines, "\n"))
	}
}

// dockerInstruction is one Dockerfile instruction, continuation lines joined.
type dockerInstruction struct {
	cmd  string // upper-cased
	args string
}

func readDockerfile(t *testing.T) []dockerInstruction {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var out []dockerInstruction
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || line == "" && cur.Len() == 0 {
			continue
		}
		if l, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(l + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, dockerInstruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDockerfile(t *testing.T) {
	ins := readDockerfile(t)
	last := -1
	for i, in := range ins {
		if in.cmd == "FROM" {
			last = i
		}
	}
	if last < 0 {
		t.Fatal("Dockerfile has no FROM")
	}
	final := ins[last:]
	image := strings.Fields(final[0].args)
	for len(image) > 0 && strings.HasPrefix(image[0], "--") { // --platform=...
		image = image[1:]
	}
	if len(image) == 0 || !regexp.MustCompile(`^gcr\.io/distroless/static[^:@]*:nonroot$`).MatchString(image[0]) {
		t.Errorf("final stage FROM %q: want gcr.io/distroless/static*:nonroot", final[0].args)
	}

	cgo := false
	for _, in := range ins[:last] {
		if in.cmd == "RUN" && strings.Contains(in.args, "CGO_ENABLED=0") && strings.Contains(in.args, "go build") ||
			in.cmd == "ENV" && strings.Contains(in.args, "CGO_ENABLED=0") {
			cgo = true
		}
	}
	if !cgo {
		t.Error("the build stage does not build with CGO_ENABLED=0")
	}

	var user, entrypoint string
	var exposed []string
	for _, in := range final {
		switch in.cmd {
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		case "EXPOSE":
			exposed = append(exposed, strings.Fields(in.args)...)
		}
	}
	if _, _, err := numericUser(user); err != nil {
		t.Errorf("final stage USER %q: %v", user, err)
	}
	var ep []string
	if err := json.Unmarshal([]byte(entrypoint), &ep); err != nil || len(ep) == 0 || ep[0] != "/dingproxy" {
		t.Errorf("ENTRYPOINT %q: want the exec form [\"/dingproxy\"]", entrypoint)
	}
	for _, p := range []string{"8080", "9090"} {
		if !strings.Contains(" "+strings.Join(exposed, " ")+" ", " "+p+" ") &&
			!strings.Contains(" "+strings.Join(exposed, " ")+" ", " "+p+"/tcp ") {
			t.Errorf("final stage does not EXPOSE %s", p)
		}
	}
}

// numericUser reads a Dockerfile USER of the form uid:gid, both numbers
// other than 0 (root).
func numericUser(user string) (uid, gid int64, err error) {
	u, g, ok := strings.Cut(user, ":")
	if !ok {
		return 0, 0, errors.New("want uid:gid, both numbers (a group too, or the image's passwd decides it)")
	}
	if uid, err = strconv.ParseInt(u, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("user %q is not a number: kubelet cannot verify runAsNonRoot against a name", u)
	}
	if gid, err = strconv.ParseInt(g, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("group %q is not a number", g)
	}
	if uid == 0 || gid == 0 {
		return 0, 0, errors.New("user and group must not be 0 (root)")
	}
	return uid, gid, nil
}

// finalUser is the USER of the Dockerfile's last stage.
func finalUser(t *testing.T) string {
	t.Helper()
	user := ""
	for _, in := range readDockerfile(t) {
		switch in.cmd {
		case "FROM":
			user = "" // a new stage
		case "USER":
			user = in.args
		}
	}
	return user
}

// The sidecar runs with runAsNonRoot, which kubelet can only verify against a
// numeric user: the image's USER is uid:gid in numbers, and the sidecar's
// securityContext (or the pod's) states the same uid and gid, so the image
// starts on any cluster and the two cannot drift apart.
func TestNumericNonRootUser(t *testing.T) {
	uid, gid, err := numericUser(finalUser(t))
	if err != nil {
		t.Fatalf("Dockerfile: final stage USER %q: %v", finalUser(t), err)
	}
	s := load(t)
	var eff runAs
	if p := s.pod.SecurityContext; p != nil {
		eff = *p
	}
	sc := s.sidecar.SecurityContext
	if sc == nil {
		t.Fatal("sidecar has no securityContext")
	}
	// A container's own setting wins over the pod's.
	if sc.RunAsUser != nil {
		eff.RunAsUser = sc.RunAsUser
	}
	if sc.RunAsGroup != nil {
		eff.RunAsGroup = sc.RunAsGroup
	}
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Error("sidecar securityContext: want runAsNonRoot: true")
	}
	check := func(field string, got *int64, want int64) {
		t.Helper()
		switch {
		case got == nil:
			t.Errorf("sidecar %s not set: kubelet verifies runAsNonRoot against a number; want %d as the Dockerfile's USER", field, want)
		case *got == 0:
			t.Errorf("sidecar %s is 0 (root)", field)
		case *got != want:
			t.Errorf("sidecar %s = %d, but the Dockerfile's USER has %d", field, *got, want)
		}
	}
	check("runAsUser", eff.RunAsUser, uid)
	check("runAsGroup", eff.RunAsGroup, gid)
}

func TestNumericUserRejects(t *testing.T) {
	for _, user := range []string{"nonroot:nonroot", "nonroot", "65532", "0:0", "65532:0", "0:65532", "65532:nonroot", ""} {
		if _, _, err := numericUser(user); err == nil {
			t.Errorf("numericUser(%q) accepted it", user)
		}
	}
	if uid, gid, err := numericUser("65532:65532"); err != nil || uid != 65532 || gid != 65532 {
		t.Errorf("numericUser(65532:65532) = %d, %d, %v", uid, gid, err)
	}
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID      int     `json:"id"`
	Type    string  `json:"type"`
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"` // a collapsed row's panels
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("grafana", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatal("grafana/dashboard.json is not valid JSON")
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana/dashboard.json: %v", err)
	}
	return d
}

// allPanels flattens rows: top-level panels and collapsed rows' panels.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// dashboardExprs returns every query of the dashboard, failing the test on a
// panel without queries or a query without an expression.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	d := readDashboard(t)
	var exprs []string
	for _, p := range allPanels(d.Panels) {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %d %q has no targets", p.ID, p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %d %q: target %q has an empty expr", p.ID, p.Title, tg.RefID)
				continue
			}
			exprs = append(exprs, tg.Expr)
		}
	}
	return exprs
}

func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	if d.SchemaVersion != 39 {
		t.Errorf("schemaVersion = %d, want 39", d.SchemaVersion)
	}
	ids := map[int]bool{}
	for _, p := range allPanels(d.Panels) {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type + " " + fmt.Sprint(v.Query)
	}
	if !strings.HasPrefix(vars["DS_PROMETHEUS"], "datasource prometheus") {
		t.Errorf("no prometheus datasource variable DS_PROMETHEUS (got %q)", vars["DS_PROMETHEUS"])
	}
	if !strings.Contains(vars["route"], "label_values(dingproxy_requests_total, route)") {
		t.Errorf("route variable = %q, want label_values(dingproxy_requests_total, route)", vars["route"])
	}
	exprs := dashboardExprs(t)
	if len(exprs) == 0 {
		t.Fatal("dashboard has no queries")
	}
}

// The fleet's Redis: the append-only file on (it holds the shared outbox's
// queued sends), no snapshots, a password from the fleet's Secret, a
// Service that selects it; the sidecar takes the URL from that Secret,
// optionally (without it, each sidecar runs alone), and the placeholder
// URL is one dingproxy accepts.
func TestFleetRedis(t *testing.T) {
	s := load(t)
	var redisDep deployment
	var redisSvc struct {
		Spec struct {
			Selector map[string]string `yaml:"selector"`
		} `yaml:"spec"`
	}
	var secret struct {
		StringData map[string]string `yaml:"stringData"`
	}
	var secretName string
	for _, m := range s.ms {
		if !isFleet(m) {
			continue
		}
		var err error
		switch m.head.Kind {
		case "Deployment":
			err = m.node.Decode(&redisDep)
		case "Service":
			err = m.node.Decode(&redisSvc)
		case "Secret":
			err = m.node.Decode(&secret)
			secretName = m.head.Metadata.Name
		}
		if err != nil {
			t.Fatalf("%s: %v", m.file, err)
		}
	}
	if len(redisDep.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("the fleet's Redis Deployment has %d containers, want 1", len(redisDep.Spec.Template.Spec.Containers))
	}
	c := redisDep.Spec.Template.Spec.Containers[0]
	args := strings.Join(c.Args, " ")
	for _, want := range []string{`--save `, `--appendonly yes`, `--appendfsync everysec`, `--requirepass $(REDIS_PASSWORD)`} {
		if !strings.Contains(args+" ", want) {
			t.Errorf("redis args %q lack %q", args, want)
		}
	}
	for k, v := range redisSvc.Spec.Selector {
		if redisDep.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("the Redis Service selects %s=%s, not the Redis pod's labels", k, v)
		}
	}
	if len(redisSvc.Spec.Selector) == 0 {
		t.Error("the Redis Service has no selector")
	}
	found := false
	for _, e := range s.sidecar.Env {
		if e.Name != "DINGPROXY_FLEET_REDIS_URL" {
			continue
		}
		found = true
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			t.Fatal("DINGPROXY_FLEET_REDIS_URL: want valueFrom.secretKeyRef")
		}
		ref := e.ValueFrom.SecretKeyRef
		if ref.Name != secretName || secret.StringData[ref.Key] == "" {
			t.Errorf("DINGPROXY_FLEET_REDIS_URL: secretKeyRef %s/%s, not in the fleet's Secret %s", ref.Name, ref.Key, secretName)
		}
		if !ref.Optional {
			t.Error("DINGPROXY_FLEET_REDIS_URL: the Secret must be optional (sidecars alone without it)")
		}
	}
	if !found {
		t.Error("the sidecar has no DINGPROXY_FLEET_REDIS_URL")
	}
	cfg := config.Default()
	cfg.Fleet.RedisURL = config.RedisURL(secret.StringData["redis-url"])
	if err := cfg.Validate(); err != nil {
		t.Errorf("the placeholder redis-url does not validate: %v", err)
	}
}
