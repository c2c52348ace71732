package jwkshttp

import (
	"errors"
	"net/http"
	"strings"
	"testing"
)

// FuzzBearer feeds arbitrary Authorization headers to the bearer parser:
// it never panics, returns a token only for one "Bearer <token>" header,
// and the token never holds a space, a tab or the scheme.
func FuzzBearer(f *testing.F) {
	for _, s := range []string{"Bearer abc.def.ghi", "bearer x", "Basic YWxhZGRpbjpvcGVu", "Bearer ", "Bearer  a", "Bearer a b", "", "Bearer\ta", "BEARER \x00"} {
		f.Add(s, false)
	}
	f.Add("Bearer a", true)
	f.Fuzz(func(t *testing.T, h string, twice bool) {
		r, err := http.NewRequest(http.MethodGet, "http://api.test/", nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Header["Authorization"] = []string{h}
		if twice {
			r.Header["Authorization"] = append(r.Header["Authorization"], h)
		}
		tok, err := bearer(r)
		if err != nil {
			if tok != "" || !errors.Is(err, ErrNoToken) && !errors.Is(err, ErrMalformedAuthorization) {
				t.Fatalf("bearer(%q) = %q, %v", h, tok, err)
			}
			return
		}
		if twice || tok == "" || strings.ContainsAny(tok, " \t") || !strings.HasSuffix(h, tok) ||
			!strings.EqualFold(h[:len("Bearer")], "Bearer") {
			t.Fatalf("bearer(%q, twice=%v) accepted %q", h, twice, tok)
		}
	})
}
