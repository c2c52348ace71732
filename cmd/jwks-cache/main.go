package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/jwkscache/jwkscache"
)

// Exit codes.
const (
	exitOK          = 0
	exitFailure     = 1 // the command failed: a bad token, a failed fetch, a daemon error
	exitUsage       = 2 // bad arguments or configuration
	exitUnavailable = 3 // verify: the keys could not be had, so the token was not judged
)

const usage = `jwks-cache keeps the signing keys (JWKS) of identity providers for the
services that verify JWTs.

Usage:
  jwks-cache serve [--config FILE] [--check]
      Run the daemon: the HTTP control plane of api/openapi.yaml, with
      /metrics, /healthz and /readyz.
  jwks-cache fetch URL [--json] [--issuer] [--allow-http] [--allow-loopback]
                   [--allow-address CIDR]... [--allow-domain DOMAIN]...
                   [--ca-file PEM] [--timeout DURATION]
      Fetch a key set once, as the cache would, and explain the result.
  jwks-cache verify TOKEN|- (--jwks URL | --issuer ISSUER |
                    --daemon URL --tenant T --provider P) [--audience AUD]
                   [--alg LIST] [--leeway DURATION] ...
      Verify a JWT and say exactly why it fails. The token is never printed.
  jwks-cache demo
      A guided tour, offline: a local identity provider and a daemon.
  jwks-cache version

Run "jwks-cache COMMAND --help" for a command's flags.
`

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}

// run is the whole command, for tests.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return cmdServe(ctx, rest, stderr, getenv)
	case "fetch":
		return cmdFetch(ctx, rest, stdout, stderr)
	case "verify":
		return cmdVerify(ctx, rest, stdin, stdout, stderr)
	case "demo":
		return cmdDemo(ctx, rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "jwks-cache %s (%s, %s/%s)\n", jwkscache.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return exitOK
	case "help", "--help", "-help", "-h":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "jwks-cache: unknown command %q\n\n%s", cmd, usage)
	return exitUsage
}

// parseArgs parses fs from args, allowing flags after positional
// arguments ("fetch URL --json"), and returns the positional ones. "--"
// ends the flags.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		// Parse stopped at a positional argument, or just after "--".
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: jwks-cache %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// flagExit maps a flag parsing error to an exit code.
func flagExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return exitUsage
}

// listFlag is a repeatable flag, also accepting comma-separated values.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func cmdServe(ctx context.Context, args []string, stderr io.Writer, getenv func(string) string) int {
	fs := newFlagSet("serve", "serve [--config FILE] [--check]", stderr)
	configPath := fs.String("config", "", "the YAML configuration `file`; none: defaults and environment")
	check := fs.Bool("check", false, "check the configuration (and each provider against the security policy), then exit")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return flagExit(err)
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "jwks-cache serve: unexpected argument %q\n", pos[0])
		return exitUsage
	}
	cfg, err := loadConfigFile(*configPath, getenv)
	if err != nil {
		fmt.Fprintln(stderr, "jwks-cache:", err)
		return exitUsage
	}
	if *check {
		return checkConfig(ctx, cfg, stderr)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	if cfg.TokensInFile {
		if fi, err := os.Stat(*configPath); err == nil && fi.Mode().Perm()&0o044 != 0 {
			log.Warn("the configuration file holds tokens and is readable by other users; chmod 600 it, or pass the tokens in "+envAdminToken,
				slog.String("file", *configPath), slog.String("mode", fi.Mode().Perm().String()))
		}
	}
	if len(cfg.AdminTokens) == 0 {
		// Printed once, here, and never logged.
		tok := newToken()
		cfg.AdminTokens = []string{tok}
		fmt.Fprintf(stderr, "jwks-cache: no admin token configured (adminTokens, %s): generated one for this run:\n\n    %s\n\n", envAdminToken, tok)
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d, err := startDaemon(ctx, cfg, log, daemonHooks{})
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped during start-up")
			return exitOK
		}
		log.Error("start failed", slog.String("error", err.Error()))
		return exitFailure
	}
	select {
	case <-ctx.Done():
		stop() // a second signal kills the process at once
		log.Info("shutting down", slog.Duration("timeout", cfg.ShutdownTimeout))
	case err := <-d.served:
		d.served <- err // shutdown reads it
		log.Error("http server failed", slog.String("error", err.Error()))
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := d.shutdown(sctx); err != nil {
		log.Error("shutdown", slog.String("error", err.Error()))
		return exitFailure
	}
	if ctx.Err() == nil {
		return exitFailure // the server failed on its own
	}
	log.Info("stopped")
	return exitOK
}

// checkConfig registers every configured provider with a Manager that has
// the configured security policy and no store, and reports the refusals.
func checkConfig(ctx context.Context, cfg *config, stderr io.Writer) int {
	roots, err := rootCAs(cfg.Security)
	if err != nil {
		fmt.Fprintln(stderr, "jwks-cache:", err)
		return exitUsage
	}
	m, err := jwkscache.New(jwkscache.Options{
		AllowHTTP: cfg.Security.AllowHTTP, AllowedDomains: cfg.Security.AllowedDomains,
		AllowedAddresses: cfg.Security.AllowedAddresses, RootCAs: roots,
		// Register judges the policy; nothing is fetched.
		HTTPClient: &http.Client{Transport: noNetwork{}},
	})
	if err != nil {
		fmt.Fprintln(stderr, "jwks-cache:", err)
		return exitUsage
	}
	defer m.Close()
	bad := 0
	for _, p := range cfg.Providers {
		if err := m.Register(ctx, p.Reg); err != nil {
			fmt.Fprintf(stderr, "%s: %s (provider %s): %v\n", p.Pos, p.Path, p.name(), err)
			bad++
		}
	}
	if bad > 0 {
		return exitUsage
	}
	fmt.Fprintf(stderr, "configuration ok: listen %s, store %s, %d providers\n", cfg.Listen, cfg.Store.describe(), len(cfg.Providers))
	return exitOK
}

// noNetwork refuses every request: serve --check fetches nothing.
type noNetwork struct{}

func (noNetwork) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("serve --check fetches nothing")
}
