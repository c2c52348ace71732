// Command compare runs the comparison workloads of issue 11 for jwkscache
// and its peers against loopback IdPs and prints one markdown table (rows:
// workloads, columns: peers), preceded by the machine and the command.
package main

import (
	"cmp"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jwkscache/jwkscache/bench"
)

func main() {
	benchtime := flag.Duration("benchtime", time.Second, "time per benchmark run (rows 1 and 2: benchtime/5 per round)")
	runs := flag.Int("runs", 3, "benchmark runs per cell, the fastest kept (rows 1 and 2: 5 x runs rounds)")
	herdN := flag.Int("herd", 1000, "goroutines of the cold herd")
	herdReps := flag.Int("herdruns", 5, "cold herds per cell (the median is shown)")
	fleetN := flag.Int("providers", 10000, "providers of the many-providers workload")
	outageWin := flag.Duration("outage", 45*time.Second, "length of the outage workload (jwkscache's MinTTL is 30 s)")
	floodN := flag.Int("flood", 10000, "unknown-kid tokens of the flood")
	testing.Init()
	flag.Parse()
	if err := flag.Set("test.benchtime", benchtime.String()); err != nil {
		fatal(err)
	}

	goVersion := runtime.Version()
	if out, err := exec.Command("go", "version").Output(); err == nil {
		goVersion = strings.TrimSpace(string(out))
	}
	fmt.Printf("Machine: %s/%s, %d CPUs, %s\n\n", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), goVersion)
	fmt.Printf("Command: `%s`\n\n", strings.TrimSpace("cd bench && go run ./cmd/compare "+strings.Join(os.Args[1:], " ")))

	peers := bench.Peers
	var rows [][]string
	add := func(name string, cell func(bench.Peer) string) {
		row := []string{name}
		for _, p := range peers {
			row = append(row, cell(p))
		}
		rows = append(rows, row)
		fmt.Fprintf(os.Stderr, "done: %s\n", name)
	}

	// Rows 1 and 2 run in many short rounds rather than a few long ones:
	// the fastest of fifteen is far less moved by a noisy neighbour than
	// the fastest of three, and row 2 is a difference of two such minima.
	rounds := *runs * 5
	if err := flag.Set("test.benchtime", (*benchtime / 5).String()); err != nil {
		fatal(err)
	}

	// 1. warm lookup
	rs, err := bench.StartIdP("RS256")
	if err != nil {
		fatal(err)
	}
	es, err := bench.StartIdP("ES256")
	if err != nil {
		fatal(err)
	}
	for _, procs := range []int{1, 2} {
		add(fmt.Sprintf("1. warm key lookup, RS256, GOMAXPROCS=%d (ns/op, allocs/op)", procs), func(p bench.Peer) string {
			r, skipped := best(rounds, procs, func(b *testing.B) { bench.BenchWarm(b, p, rs) })
			if skipped {
				return "n/a: no key lookup, only VerifySignature (see row 2)"
			}
			return fmt.Sprintf("%d ns, %d allocs", r.NsPerOp(), r.AllocsPerOp())
		})
	}

	// 2. verify overhead: the raw baselines and the peers are run in
	// interleaved rounds, keeping each one's fastest run, so that drift of
	// the machine hits them alike.
	for _, idp := range []struct {
		alg string
		p   *bench.IdP
	}{{"RS256", rs}, {"ES256", es}} {
		series := map[string]func(*testing.B){
			"raw golang-jwt": func(b *testing.B) { bench.BenchRawJWT(b, idp.p) },
			"raw go-jose":    func(b *testing.B) { bench.BenchRawJOSE(b, idp.p) },
		}
		for _, p := range peers {
			series[p.Name] = func(b *testing.B) { bench.BenchVerify(b, p, idp.p) }
		}
		res := map[string]testing.BenchmarkResult{}
		for range rounds {
			for _, name := range append([]string{"raw golang-jwt", "raw go-jose"}, names(peers)...) {
				r, _ := best(1, 1, series[name])
				if old, ok := res[name]; !ok || r.NsPerOp() < old.NsPerOp() {
					res[name] = r
				}
			}
		}
		rawJWT, rawJOSE := res["raw golang-jwt"], res["raw go-jose"]
		add(fmt.Sprintf("2. verify %s through the cache minus verify with the raw key (GOMAXPROCS=1; raw golang-jwt %d ns %d allocs, raw go-jose %d ns %d allocs)",
			idp.alg, rawJWT.NsPerOp(), rawJWT.AllocsPerOp(), rawJOSE.NsPerOp(), rawJOSE.AllocsPerOp()), func(p bench.Peer) string {
			r := res[p.Name]
			base, baseName := rawJWT, "golang-jwt"
			if p.Name == "go-oidc/v3" {
				base, baseName = rawJOSE, "go-jose"
			}
			return fmt.Sprintf("%+d ns, %+d allocs (%d ns vs raw %s)", r.NsPerOp()-base.NsPerOp(),
				r.AllocsPerOp()-base.AllocsPerOp(), r.NsPerOp(), baseName)
		})
	}
	rs.Close()
	es.Close()
	if err := flag.Set("test.benchtime", benchtime.String()); err != nil {
		fatal(err)
	}

	// 3. cold herd
	for _, fail := range []bool{false, true} {
		name := fmt.Sprintf("3. cold herd: %d goroutines at once (IdP requests, got the key, time until all returned)", *herdN)
		if fail {
			name = fmt.Sprintf("3b. cold herd, first fetch answers 503 (%d goroutines)", *herdN)
		}
		add(name, func(p bench.Peer) string {
			h, err := bench.HerdMany(p, *herdN, fail, 5*time.Second, *herdReps)
			if err != nil {
				return "error: " + short(err)
			}
			return h.String() + herdNote(p.Name, fail)
		})
	}

	// 4. conditional requests
	add("4. If-None-Match / If-Modified-Since on a refetch", func(p bench.Peer) string {
		r, err := bench.Conditional(p)
		if err != nil {
			return "error: " + short(err)
		}
		return r + " (" + refetchHow[p.Name] + ")"
	})

	// 5. unknown-kid flood
	tokens := bench.FloodTokens(*floodN)
	add(fmt.Sprintf("5. %d unknown-kid tokens from 100 goroutines (IdP requests, flood time, known-kid RS256 verify latency meanwhile)", *floodN),
		func(p bench.Peer) string {
			r, err := bench.Flood(p, tokens, 100, 2*time.Second)
			if err != nil {
				return "error: " + short(err)
			}
			return r.String()
		})

	// 6. rotation without notice
	add("6. rotation without notice, twice in a row: until a token of the new kid verifies (retry every 100 ms, 5 s window each)", func(p bench.Peer) string {
		rs, err := bench.Rotations(p, 2, 5*time.Second, 100*time.Millisecond)
		if err != nil {
			return "error: " + short(err)
		}
		return fmt.Sprintf("1st: %s; 2nd: %s%s", rs[0], rs[1], rotationNote[p.Name])
	})

	// 7. outage after a short max-age (run for all peers at once: it waits)
	outage := make([]string, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Go(func() {
			r, err := bench.Outage(p, time.Second, *outageWin, time.Second)
			if err != nil {
				outage[i] = "error: " + short(err)
				return
			}
			outage[i] = r.String() + outageNote[p.Name]
		})
	}
	wg.Wait()
	add(fmt.Sprintf("7. IdP outage (every request 503) after max-age=1: known token verified every 1 s for %s", *outageWin), func(p bench.Peer) string {
		return outage[slices.IndexFunc(peers, func(q bench.Peer) bool { return q.Name == p.Name })]
	})

	// 8. many providers
	add(fmt.Sprintf("8. %d providers held at once (distinct URLs on one IdP): heap and goroutines while held, warm-up", *fleetN), func(p bench.Peer) string {
		r, err := bench.Fleet(p, *fleetN)
		if err != nil {
			return "error: " + short(err)
		}
		return r.String() + fleetNote[p.Name]
	})

	fmt.Print("| workload |")
	for _, p := range peers {
		fmt.Printf(" %s |", p.Name)
	}
	fmt.Print("\n|---|")
	for range peers {
		fmt.Print("---|")
	}
	fmt.Println()
	for _, row := range rows {
		fmt.Println("| " + strings.Join(row, " | ") + " |")
	}
}

// refetchHow says how each peer was made to refetch in workload 4.
var refetchHow = map[string]string{
	"jwkscache":        "Manager.Refresh",
	"keyfunc/v3":       "no refresh API: an unknown kid",
	"jwx/v3 jwk.Cache": "jwk.Cache.Refresh",
	"go-oidc/v3":       "no refresh API: an unknown kid",
}

func names(peers []bench.Peer) []string {
	var out []string
	for _, p := range peers {
		out = append(out, p.Name)
	}
	return out
}

// herdNote explains a peer's herd result from its source.
func herdNote(peer string, fail bool) string {
	switch {
	case peer == "go-oidc/v3" && !fail:
		return " [each goroutine verifies an RS256 signature: no lookup without verify]"
	case peer == "keyfunc/v3" && fail:
		return " [first fetch in the constructor, error swallowed; unknown-kid refetch limiter 1/5 min, burst 1: the others fail at once]"
	case peer == "jwx/v3 jwk.Cache" && fail:
		return " [Register waits ready by default until the context ends (5 s here); after a failed fetch httprc retries after MinInterval, 15 min]"
	case peer == "go-oidc/v3" && fail:
		return " [waiters share one in-flight fetch and get its 503; no retry]"
	}
	return ""
}

// rotationNote says from each peer's source when it would pick up the
// new key when it does not at once.
var rotationNote = map[string]string{
	"jwx/v3 jwk.Cache": " [no refetch on an unknown kid: the next scheduled fetch, at max-age clamped to httprc's 15 min-30 d]",
	"keyfunc/v3":       " [unknown-kid refetch limiter: 1 per 5 min, burst 1, wait at most 1 min; otherwise the hourly refresh]",
}

// fleetNote says how each peer holds many providers.
var fleetNote = map[string]string{
	"jwkscache":        " [one Manager, one Register each]",
	"keyfunc/v3":       " [one Keyfunc each (one Keyfunc merges the keys of its URLs); each fetches in its constructor and runs a refresh goroutine]",
	"jwx/v3 jwk.Cache": " [one jwk.Cache, one Register each, which waits for the first fetch]",
	"go-oidc/v3":       " [one RemoteKeySet each, fetched on first use]",
}

// outageNote says what each peer does with expired keys, from its source.
var outageNote = map[string]string{
	"jwkscache":        " [max-age clamped to MinTTL 30 s; expired keys served for StaleWhileError 1 h while refreshes fail]",
	"keyfunc/v3":       " [keys never expire: refetch hourly, kept on failure]",
	"jwx/v3 jwk.Cache": " [keys never expire: refetch at max-age clamped to 15 min, kept on failure]",
	"go-oidc/v3":       " [keys never expire: refetch only on an unknown kid]",
}

// best runs f runs times with GOMAXPROCS procs and keeps the fastest
// result; skipped reports a benchmark that skipped itself.
func best(runs, procs int, f func(*testing.B)) (r testing.BenchmarkResult, skipped bool) {
	old := runtime.GOMAXPROCS(procs)
	defer runtime.GOMAXPROCS(old)
	for i := range runs {
		x := testing.Benchmark(f)
		if x.N == 0 {
			return x, true
		}
		if i == 0 || x.NsPerOp() < r.NsPerOp() {
			r = x
		}
	}
	return r, false
}

func short(err error) string {
	s := strings.ReplaceAll(err.Error(), "|", "/")
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return cmp.Or(s, "error")
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
