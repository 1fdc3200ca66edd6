package dingtalk

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestDescribe(t *testing.T) {
	tests := []struct {
		path, route     string
		up              Upstream
		tokenEP, noAppT bool
	}{
		// The catalogue: a user id never becomes part of the route.
		{"/v1.0/contact/users/manager4220", "/v1.0/contact/users/{unionId}", API, false, false},
		{"/v1.0/contact/users/$:LWCP_v1:$abc==", "/v1.0/contact/users/{unionId}", API, false, false},
		{"/v1.0/contact/users/中文", "/v1.0/contact/users/{unionId}", API, false, false},
		{"/v1.0/contact/users/zhang san\xe9", "/v1.0/contact/users/{unionId}", API, false, false},
		// A literal wins over a parameter at the same place.
		{"/v1.0/contact/users/search", "/v1.0/contact/users/search", API, false, false},
		// Only calls that issue a token are token endpoints.
		{"/v1.0/oauth2/accessToken", "/v1.0/oauth2/accessToken", API, true, true},
		{"/v1.0/oauth2/ding123/token", "/v1.0/oauth2/{corpId}/token", API, true, true},
		{"/v1.0/oauth2/jsapiTickets", "/v1.0/oauth2/jsapiTickets", API, false, false},
		{"/v1.0/oauth2/apps/authInfo", "/v1.0/oauth2/apps/authInfo", API, false, false},
		{"/v1.0/oauth2/authRules/user", "/v1.0/oauth2/authRules/user", API, false, false},
		{"/v1.0/oauth2/ssoUserInfo", "/v1.0/oauth2/ssoUserInfo", API, false, false},
		{"/v1.0/oauth2/userAccessToken", "/v1.0/oauth2/userAccessToken", API, true, true},
		{"/v1.0/oauth2/corpAccessToken", "/v1.0/oauth2/corpAccessToken", API, true, true},
		{"/gettoken", "/gettoken", OAPI, true, true},
		{"/service/get_corp_token", "/service/get_corp_token", OAPI, true, true},
		{"/get_jsapi_ticket", "/get_jsapi_ticket", OAPI, false, false},
		{"/robot/send", "/robot/send", OAPI, false, true},
		// Empty segments do not count: godingtalk posts to //attendance/list.
		{"//attendance/list", "/attendance/list", OAPI, false, false},
		{"/topapi/v2/user/get/", "/topapi/v2/user/get", OAPI, false, false},
		// Old-API paths keep plain segments, and lose every other.
		{"/topapi/v2/user/get", "/topapi/v2/user/get", OAPI, false, false},
		{"/user/get\xff\xfe", "/user/{}", OAPI, false, false},
		{"/topapi/message/corpconversation/asyncsend_v2/\xe9", "/topapi/message/corpconversation/asyncsend_v2/{}", OAPI, false, false},
		{"/", "/", OAPI, false, false},
		// An unknown new-API path keeps known literals only.
		{"/v1.0/contact/nosuchthing/u1", "/v1.0/contact/{}/{}", API, false, false},
		{"/v2.0/" + strings.Repeat("x", 100), "/v2.0/{}", API, false, false},
	}
	for _, tt := range tests {
		got := Describe(tt.path)
		if got.Route != tt.route || got.Upstream != tt.up || got.TokenEndpoint != tt.tokenEP || got.NoAppToken != tt.noAppT {
			t.Errorf("Describe(%q) = %+v, want route %q upstream %v token endpoint %v no app token %v",
				tt.path, got, tt.route, tt.up, tt.tokenEP, tt.noAppT)
		}
	}
}

// TestDescribeBounded: however a path is spelled, its route is printable
// ASCII and bounded, and deep paths end in {*}.
func TestDescribeBounded(t *testing.T) {
	deep := strings.Repeat("/a", 500)
	for _, p := range []string{deep, "/v1.0" + deep, strings.Repeat("/", 1000), "/v1.0/" + strings.Repeat("\xff/", 300), "/" + strings.Repeat("é", 5000)} {
		r := Describe(p).Route
		if !ValidRoute(r) {
			t.Errorf("Describe(%.30q).Route = %.60q: not a valid route", p, r)
		}
	}
	if r := Describe(deep).Route; !strings.HasSuffix(r, "/"+paramTail) || strings.Count(r, "/") != maxRouteSegments+1 {
		t.Errorf("deep path's route = %q, want %d segments then /%s", r, maxRouteSegments, paramTail)
	}
}

// TestCatalogue: the generated catalogue is the SDK's (thousands of APIs),
// and every template is a valid route that Describe gives back for a path
// made from it.
func TestCatalogue(t *testing.T) {
	if n := CatalogueSize(); n < 2000 {
		t.Fatalf("catalogue has %d APIs, want the SDK's 2000+", n)
	}
	for _, line := range strings.Split(apisTxt, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || strings.HasPrefix(line, "#") {
			continue
		}
		tmpl := f[1]
		if !ValidRoute(tmpl) {
			t.Errorf("template %q is not a valid route", tmpl)
		}
		// Fill the parameters with an id no literal equals.
		segs := strings.Split(tmpl, "/")
		for i, s := range segs {
			if strings.HasPrefix(s, "{") {
				segs[i] = "id-\xe9-42"
			}
		}
		got := Describe(strings.Join(segs, "/"))
		if got.Upstream != API || !sameShape(got.Route, tmpl) {
			t.Errorf("Describe(path of %s) = %q", tmpl, got.Route)
		}
	}
}

// sameShape: equal but for parameter names (two templates that differ only
// there are one API).
func sameShape(a, b string) bool {
	as, bs := strings.Split(a, "/"), strings.Split(b, "/")
	if len(as) != len(bs) {
		return false
	}
	for i := range as {
		ap, bp := strings.HasPrefix(as[i], "{"), strings.HasPrefix(bs[i], "{")
		if ap != bp || (!ap && as[i] != bs[i]) {
			return false
		}
	}
	return true
}

func FuzzDescribe(f *testing.F) {
	for _, s := range []string{"/v1.0/contact/users/u1", "/user/get\xff\xfe", "//attendance/list", "/v2.0/a/b/c", "/gettoken", "/v1.0/oauth2/x/token"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		e := Describe(path)
		if !ValidRoute(e.Route) || !utf8.ValidString(e.Route) {
			t.Fatalf("Describe(%q).Route = %q: not a valid route", path, e.Route)
		}
		if e.Upstream != UpstreamFor(path) {
			t.Fatalf("Describe(%q) upstream %v, UpstreamFor %v", path, e.Upstream, UpstreamFor(path))
		}
		if e.TokenEndpoint && !e.NoAppToken {
			t.Fatalf("Describe(%q): a token endpoint that takes the app token", path)
		}
		if Describe(path) != e {
			t.Fatalf("Describe(%q) is not deterministic", path)
		}
	})
}

// BenchmarkDescribe: the per-request cost of deciding the API, for a known
// new-API path with an id, an old-API path, and an unknown new-API path.
func BenchmarkDescribe(b *testing.B) {
	for _, p := range []string{"/v1.0/contact/users/manager4220", "/topapi/v2/user/get", "/v1.0/contact/nosuch/u1"} {
		b.Run(strings.ReplaceAll(p[1:], "/", "_"), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Describe(p)
			}
		})
	}
}

// TestReadEndpointsSurviveDescribe: every POST read of the catalogue stays a
// read after Describe, whether or not the SDK catalogue knows its path.
func TestReadEndpointsSurviveDescribe(t *testing.T) {
	for k := range readEndpoints {
		if !Describe(k).Read {
			t.Errorf("Describe(%q).Read = false (route %q)", k, Describe(k).Route)
		}
	}
	if Describe("/topapi/message/corpconversation/asyncsend_v2").Read {
		t.Error("a send is a read")
	}
	if !Describe("//attendance/list").Read {
		t.Error("//attendance/list (godingtalk) is not the read /attendance/list")
	}
}

// TestAnonymousAPIsGetTheToken: new-API calls the SDK sends without a
// token header still get the app token (only calls that issue one do not):
// their callers could not add one themselves, and it does no harm.
func TestAnonymousAPIsGetTheToken(t *testing.T) {
	if e := Describe("/v1.0/miniapp/versions/rollback"); e.NoAppToken || e.TokenEndpoint {
		t.Errorf("Describe(rollback) = %+v, want the token injected", e)
	}
}
