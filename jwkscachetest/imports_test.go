package jwkscachetest_test

import (
	"go/build"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const (
	thisPackage = "github.com/jwkscache/jwkscache/jwkscachetest"
	rootPackage = "github.com/jwkscache/jwkscache"
)

// forbidden reports why the package must not depend on path, or "".
func forbidden(path string) string {
	switch {
	case path == "testing" || strings.HasPrefix(path, "testing/"):
		return "it is a library for tests, like net/http/httptest, and must not import package testing"
	case path == rootPackage:
		return "the tests inside package jwkscache import it (through internal/testidp): an import cycle"
	}
	return ""
}

// The package's own files import neither package testing nor jwkscache.
func TestDirectImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pkg.Imports, "github.com/go-jose/go-jose/v4") {
		t.Fatalf("imports look wrong: %v", pkg.Imports)
	}
	for _, path := range pkg.Imports {
		if why := forbidden(path); why != "" {
			t.Errorf("jwkscachetest imports %s: %s", path, why)
		}
	}
}

// Nor does anything it depends on, as the go command computes it.
func TestNoForbiddenDependencies(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found:", err)
	}
	out, err := exec.Command(goCmd, "list", "-deps", "-f", "{{.ImportPath}}", thisPackage).Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, thisPackage) {
		t.Fatalf("go list -deps did not list the package: %v", deps)
	}
	for _, path := range deps {
		if why := forbidden(path); why != "" {
			t.Errorf("jwkscachetest depends on %s: %s", path, why)
		}
	}
}
