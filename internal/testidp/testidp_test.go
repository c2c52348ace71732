package testidp

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"testing"
)

func kidsAt(t *testing.T, c *http.Client, url string) []string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []struct {
			KID string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		t.Fatalf("%s: %q: %v", url, body, err)
	}
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.KID)
	}
	return out
}

// The thin layer keeps the API the root package's tests use.
func TestThinLayer(t *testing.T) {
	p, keys := NewDefault()
	if len(keys) != 3 || keys[0].KID != "rsa-1" || keys[1].KID != "ec-1" || keys[2].KID != "ed-1" {
		t.Fatalf("keys = %v", keys)
	}
	srv := p.StartTLS(t)
	c := srv.Client()
	c.Transport.(*http.Transport).TLSClientConfig.RootCAs = p.CertPool()
	if got := kidsAt(t, c, srv.URL+DefaultPath); !slices.Equal(got, []string{"rsa-1", "ec-1", "ed-1"}) {
		t.Errorf("NewDefault kids = %v", got)
	}
	plain := p.Start(t)
	if got := kidsAt(t, plain.Client(), plain.URL+DefaultPath); len(got) != 3 {
		t.Errorf("plain kids = %v", got)
	}

	e := New()
	if resp, err := e.Client().Get("https://idp.test" + DefaultPath); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("New serves %v %v", resp, err)
	}
	e.SetKeys("/p", NewKey("ES256", "a"), NewKey("ES256", "b"))
	e.AddKey("/p", NewUniqueKey("RS256", "c"))
	e.RemoveKey("/p", "a")
	if k := e.Rotate("/p", "EdDSA"); k.KID != "k1" {
		t.Errorf("Rotate kid = %q", k.KID)
	}
	want := []string{"c", "k1"}
	if got := kidsAt(t, e.Client(), "https://idp.test/p"); !slices.Equal(got, want) || !slices.Equal(kidsOf(e.Keys("/p")), want) {
		t.Errorf("kids = %v, Keys = %v, want %v", got, kidsOf(e.Keys("/p")), want)
	}
	if len(GzipBomb(10)) == 0 || SPKIPin(p.Leaf()) == "" {
		t.Error("GzipBomb or SPKIPin")
	}
	var f Fault = Fault{Status: 500, Count: 1}
	e.SetFault("/p", f)
	if resp, _ := e.Client().Get("https://idp.test/p"); resp.StatusCode != 500 || resp.Header.Get("Content-Type") == ContentTypeJWKS {
		t.Errorf("fault: %v", resp)
	}
}

func kidsOf(keys []*Key) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.KID)
	}
	return out
}
