package jwkscache_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// sdDoc is the document whose test references are checked.
const sdDoc = "docs/security.md"

// sdMinThreats is the number of threats the threat model must keep.
const sdMinThreats = 12

// A test reference in docs/security.md is an inline code span holding
//
//	TestName, FuzzName or BenchmarkName        a test of the root package
//	dir: TestName                              a test of the package in dir
//	TestName/subtest, dir: TestName/subtest    a subtest (only TestName is checked)
//
// where dir is a directory relative to the repository root, such as
// controlplane or store/redisstore.
var (
	// sdRefRE is a whole code span that is a test reference.
	sdRefRE = regexp.MustCompile(`^(?:([a-z0-9][a-z0-9_./-]*): )?((?:Test|Fuzz|Benchmark)[A-Za-z0-9_]*)(/\S+)?$`)
	// sdLooksLikeRefRE is a code span that mentions a test name: it must be a
	// well-formed reference, so a misspelt one cannot be skipped silently.
	sdLooksLikeRefRE = regexp.MustCompile(`(?:^|[\s:(])(?:Test|Fuzz|Benchmark)[A-Z_0-9]`)
	// sdCodeSpanRE is an inline code span (a single backtick on each side).
	sdCodeSpanRE = regexp.MustCompile("`([^`]+)`")
)

// sdRef is one test reference of the document.
type sdRef struct {
	line int    // 1-based line of the span's start
	text string // the span, whitespace normalised
	dir  string // package directory, "." for the root
	name string // the top-level test function
	// problem says, for a malformed reference, what is wrong.
	problem string
}

// TestSecurityDocNamesExistingTests fails for every test that
// docs/security.md names and no _test.go file of the repository defines,
// and when the threat model lists fewer than sdMinThreats threats or a
// threat that cites no test.
func TestSecurityDocNamesExistingTests(t *testing.T) {
	raw, err := os.ReadFile(filepath.FromSlash(sdDoc))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	refs, malformed := sdRefs(doc)
	for _, m := range malformed {
		t.Errorf("%s:%d: %s", sdDoc, m.line, m.problem)
	}
	if len(refs) == 0 {
		t.Fatalf("%s names no test", sdDoc)
	}

	defined, err := sdTestFuncs(".")
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for _, r := range refs {
		if defined[r.dir][r.name] {
			continue
		}
		where := "the root package"
		if r.dir != "." {
			where = r.dir
		}
		hint := ""
		if dirs := sdDefinedIn(defined, r.name); len(dirs) > 0 {
			hint = " (defined in " + strings.Join(dirs, ", ") + ")"
		}
		missing = append(missing, "  "+sdDoc+":"+strconv.Itoa(r.line)+": `"+r.text+"`: no func "+r.name+" in the _test.go files of "+where+hint)
	}
	if len(missing) > 0 {
		t.Errorf("%s names %d test(s) that do not exist:\n%s", sdDoc, len(missing), strings.Join(missing, "\n"))
	}

	threats := sdThreats(doc)
	if len(threats) < sdMinThreats {
		t.Errorf("%s: the threat model lists %d threats (### headings under \"## Threat model\"), want at least %d",
			sdDoc, len(threats), sdMinThreats)
	}
	for _, th := range threats {
		if r, _ := sdRefs(th.body); len(r) == 0 {
			t.Errorf("%s:%d: threat %q cites no test", sdDoc, th.line, th.title)
		}
	}
	t.Logf("%d test references, %d threats", len(refs), len(threats))
}

// sdRefs returns the test references of a Markdown text, outside fenced
// code blocks, and the code spans that mention a test name but are not a
// reference.
func sdRefs(doc string) (refs, malformed []sdRef) {
	text := sdStripFences(doc)
	// Code spans never cross a blank line: pairing backticks paragraph by
	// paragraph keeps a stray one from shifting the rest of the document.
	off := 0
	for _, para := range strings.SplitAfter(text, "\n\n") {
		r, m := sdParagraphRefs(para, 1+strings.Count(text[:off], "\n"))
		refs, malformed = append(refs, r...), append(malformed, m...)
		off += len(para)
	}
	return refs, malformed
}

// sdParagraphRefs is sdRefs for one paragraph starting at line first. A
// paragraph with an odd number of backticks is reported as malformed, since
// a reference in it could be missed.
func sdParagraphRefs(text string, first int) (refs, malformed []sdRef) {
	if strings.Count(text, "`")%2 != 0 {
		malformed = append(malformed, sdRef{line: first, problem: "the paragraph has an odd number of backticks, so a test reference in it could be missed"})
	}
	for _, m := range sdCodeSpanRE.FindAllStringSubmatchIndex(text, -1) {
		span := strings.Join(strings.Fields(text[m[2]:m[3]]), " ")
		line := first + strings.Count(text[:m[0]], "\n")
		sm := sdRefRE.FindStringSubmatch(span)
		if sm == nil {
			if sdLooksLikeRefRE.MatchString(span) {
				malformed = append(malformed, sdRef{line: line, text: span,
					problem: "`" + span + "` mentions a test but is not a reference of the form `TestName`, `TestName/sub` or `dir: TestName`"})
			}
			continue
		}
		dir := sm[1]
		if dir == "" {
			dir = "."
		}
		refs = append(refs, sdRef{line: line, text: span, dir: filepath.ToSlash(filepath.Clean(dir)), name: sm[2]})
	}
	return refs, malformed
}

// sdStripFences blanks the lines of fenced code blocks, keeping the line
// count, so that line numbers stay right.
func sdStripFences(doc string) string {
	lines := strings.Split(doc, "\n")
	in := false
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			in = !in
			lines[i] = ""
			continue
		}
		if in {
			lines[i] = ""
		}
	}
	return strings.Join(lines, "\n")
}

// sdThreat is a ### section of the threat model.
type sdThreat struct {
	title string
	line  int
	body  string
}

// sdThreats returns the ### sections under "## Threat model".
func sdThreats(doc string) []sdThreat {
	lines := strings.Split(sdStripFences(doc), "\n")
	var out []sdThreat
	in := false
	for i, l := range lines {
		switch {
		case strings.HasPrefix(l, "## "):
			in = strings.TrimSpace(l[3:]) == "Threat model"
		case in && strings.HasPrefix(l, "### "):
			out = append(out, sdThreat{title: strings.TrimSpace(l[4:]), line: i + 1})
		case in && len(out) > 0:
			out[len(out)-1].body += l + "\n"
		}
	}
	return out
}

// sdTestFuncs parses every _test.go file under root (nested modules
// included; testdata, node_modules and directories Go ignores skipped) and
// returns, by directory relative to root in slash form ("." for root), the
// top-level functions whose names start with Test, Fuzz or Benchmark.
func sdTestFuncs(root string) (map[string]map[string]bool, error) {
	out := map[string]map[string]bool{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (name == "testdata" || name == "node_modules" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasSuffix(name, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		dir := filepath.ToSlash(rel)
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Recv != nil {
				continue
			}
			if n := fn.Name.Name; strings.HasPrefix(n, "Test") || strings.HasPrefix(n, "Fuzz") || strings.HasPrefix(n, "Benchmark") {
				if out[dir] == nil {
					out[dir] = map[string]bool{}
				}
				out[dir][n] = true
			}
		}
		return nil
	})
	return out, err
}

// sdDefinedIn lists the directories that define a test called name.
func sdDefinedIn(defined map[string]map[string]bool, name string) []string {
	var dirs []string
	for dir, names := range defined {
		if names[name] {
			dirs = append(dirs, dir)
		}
	}
	sort.Strings(dirs)
	return dirs
}
