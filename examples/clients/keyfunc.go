package clients

import (
	"context"
	"net/http"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"golang.org/x/time/rate"
)

// NewKeyfunc returns a keyfunc reading one provider's keys from the daemon,
// at jwksURL: http://jwks-cache:8080/tenants/acme/providers/main/jwks, say.
// Its refresh goroutine stops with ctx.
//
// Its first fetch and its periodic ones are answered from the daemon's
// memory. When a token's kid matches no key, its refetch says
// "Cache-Control: no-cache", so that the daemon revalidates the set with
// the identity provider before answering, and a new key is caught at once.
func NewKeyfunc(ctx context.Context, jwksURL string) (keyfunc.Keyfunc, error) {
	client := &http.Client{
		Transport: revalidateOnMiss{http.DefaultTransport},
		Timeout:   5 * time.Second, // the daemon waits at most 2 s for the IdP
	}
	remote, err := jwkset.NewStorageFromHTTP(jwksURL, jwkset.HTTPClientStorageOptions{
		Client: client,
		// jwkset makes its first and periodic fetches under this context,
		// and the fetch after an unknown kid under the caller's.
		Ctx:                       context.WithValue(ctx, routineFetch{}, true),
		RefreshInterval:           time.Minute, // from the daemon's memory: cheap
		NoErrorReturnFirstHTTPReq: true,        // a daemon still starting is not fatal
	})
	if err != nil {
		return nil, err
	}
	storage, err := jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
		HTTPURLs: map[string]jwkset.Storage{jwksURL: remote},
		// The daemon rations its requests to the IdP: at most one fetch a
		// second for unknown kids here, waiting for it at most 5 s.
		RefreshUnknownKID: rate.NewLimiter(rate.Every(time.Second), 1),
		RateLimitWaitMax:  5 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	return keyfunc.New(keyfunc.Options{Ctx: ctx, Storage: storage})
}

// routineFetch marks the context of jwkset's first and periodic fetches.
type routineFetch struct{}

// revalidateOnMiss adds "Cache-Control: no-cache" to the requests that are
// not routine fetches: the refetches after an unknown kid.
type revalidateOnMiss struct{ next http.RoundTripper }

func (t revalidateOnMiss) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Context().Value(routineFetch{}) == nil {
		r = r.Clone(r.Context())
		r.Header.Set("Cache-Control", "no-cache")
	}
	return t.next.RoundTrip(r)
}
