package controlplane_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// registrationSeeds are PUT bodies on both sides of the contract.
var registrationSeeds = []string{
	`{"jwksUrl":"https://idp.test/acme/auth0"}`,
	`{"jwksUrl":"https://idp.test/acme/auth0","minTtl":"PT1M","retryPolicy":{"deadline":"PT10S","jitter":"decorrelated"}}`,
	`{"issuer":"https://idp.test/"}`,
	`{"tenantId":"acme","providerId":"auth0","jwksUrl":"https://idp.test/k","issuer":"https://idp.test/","allowHttp":false,"allowedDomains":["idp.test"],"refreshEarly":"PT1M","staleWhileError":"PT0S","minTtl":"PT45S","maxTtl":"PT36H","maxResponseBytes":65536,"negativeCacheTtl":"PT1M30S","maxRedirects":0,"pinnedSpki":["47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"],"prefetchJitter":"PT1.5S","retryPolicy":{"maxRetries":0,"attemptTimeout":"PT2S","initialBackoff":"PT0.1S","maxBackoff":"PT1S","deadline":"PT30S","jitter":"none"}}`,
	`{"jwksUrl":"http://idp.test/k"}`,
	`{"jwksUrl":"https://10.0.0.1/k"}`,
	`{"jwksUrl":"https://u:p@idp.test/k"}`,
	`{"jwksUrl":"https://idp.test/k","minTtl":"PT1S","maxTtl":"P1M","bogus":1,"minTTL":"PT1M"}`,
	`{"jwksUrl":"https://idp.test/k","jwksUrl":"https://idp.test/j"}`,
	`{"jwksUrl":"https://idp.test/k","retryPolicy":{"maxRetries":11,"retries":1}}`,
	`{"jwksUrl":"https://idp.test/k","retryPolicy":null}`,
	`{"jwksUrl":"https://idp.test/k","retryPolicy":[]}`,
	`{"jwksUrl":"","issuer":"https://idp.test/"}`,
	`{"jwksUrl":"https://idp.test/k","maxResponseBytes":0}`,
	`{"jwksUrl":"https://idp.test/k","maxRedirects":1.0}`,
	`{"jwksUrl":"https://idp.test/k","allowedDomains":["A.test","x.",""]}`,
	`{"tenantId":"globex","jwksUrl":"https://idp.test/k"}`,
	`{"jwksUrl":"https://idp.test/k"} trailing`,
	`[]`, `null`, `"x"`, `{`, ``, `{}`,
	`{"jwksUrl":"https://idp.test/\u0000"}`,
	"{\"jwksUrl\":\"https://idp.test/k\",\"\xff\":1}",
}

// FuzzControlPlaneRegistration sends arbitrary PUT bodies: the handler
// never panics nor answers 5xx, every answer meets the contract, and it
// accepts only bodies that the contract's Registration schema accepts.
func FuzzControlPlaneRegistration(f *testing.F) {
	for _, s := range registrationSeeds {
		f.Add([]byte(s))
	}
	e := newEnv(f)
	e.serveKeys("/acme/auth0", "k1")
	f.Fuzz(func(t *testing.T, body []byte) {
		r := serve(t, e.c, e.h, "PUT", prov, string(body), hdrs(admin, asJSON)...)
		if r.status >= 500 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		switch r.status {
		case http.StatusAccepted:
			if r.reqErr != nil {
				t.Errorf("accepted a body the contract refuses: %q: %v", body, firstLine(r.reqErr))
			}
		case http.StatusBadRequest, http.StatusForbidden, http.StatusRequestEntityTooLarge:
		default:
			t.Errorf("%d %s", r.status, r.body)
		}
	})
}

// FuzzControlPlaneJWKSRequest varies what a client of GET .../jwks
// controls: the kid, If-None-Match, If-Modified-Since and Cache-Control.
// The handler never panics nor answers 5xx for a warm provider, every
// answer meets the contract, a 200 holds only the kid asked for, and a 304
// needs a precondition.
func FuzzControlPlaneJWKSRequest(f *testing.F) {
	e := newEnv(f)
	e.register(f, "acme", "auth0", "k1", "k2", "a/b c")
	ok := serve(f, e.c, e.h, "GET", prov+"/jwks", "")
	etag, lastMod := ok.header.Get("ETag"), ok.header.Get("Last-Modified")
	for _, s := range [][4]string{
		{"", "", "", ""},
		{"k1", "", "", ""},
		{"a/b c", "", "", ""},
		{"nope", "", "", ""},
		{"", etag, "", ""},
		{"", "W/" + etag, "", ""},
		{"", `"x", ` + etag, "", ""},
		{"", "*", "", ""},
		{"", `"unterminated`, "", ""},
		{"", "", lastMod, ""},
		{"", "", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat), ""},
		{"", "", "Sun, 06 Nov 1994 08:49:37 GMT", ""},
		{"", "", "garbage", ""},
		{"", "", "", "no-cache"},
		{"k1", "", "", "max-age=0"},
		{"", "", "", `max-age="0", foo="a,b"`},
		{"", etag, lastMod, "no-store"},
		{strings.Repeat("k", 1025), "", "", ""},
		{"\x00", "", "", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, kid, inm, ims, cc string) {
		target := prov + "/jwks"
		if kid != "" {
			target += "?kid=" + url.QueryEscape(kid)
		}
		var kv []string
		for _, h := range [][2]string{{"If-None-Match", inm}, {"If-Modified-Since", ims}, {"Cache-Control", cc}} {
			if h[1] != "" {
				kv = append(kv, h[0], h[1])
			}
		}
		r := serve(t, e.c, e.h, "GET", target, "", kv...)
		switch r.status {
		case http.StatusOK:
			if kid != "" {
				for _, k := range kidsOf(t, r.body) {
					if k != kid {
						t.Errorf("?kid=%q served %q", kid, k)
					}
				}
			}
		case http.StatusNotModified:
			if inm == "" && ims == "" {
				t.Error("304 without a precondition")
			}
			if len(r.body) != 0 {
				t.Error("304 with a body")
			}
		case http.StatusBadRequest, http.StatusNotFound:
		default:
			t.Errorf("%d %s", r.status, r.body)
		}
	})
}
