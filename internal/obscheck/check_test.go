package obscheck

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// promqlParser is Prometheus's PromQL parser with its default options, as a
// server without feature flags runs it.
var promqlParser = parser.NewParser(parser.Options{})

// targetLabels are added by Prometheus at scrape time to every series.
var targetLabels = []string{"job", "instance"}

// metricIndex resolves a series name to its family in exportedMetrics.
type metricIndex map[string]metricSpec

func newMetricIndex(specs []metricSpec) metricIndex {
	idx := make(metricIndex, len(specs))
	for _, s := range specs {
		idx[s.name] = s
	}
	return idx
}

// lookup returns the family a series name belongs to, and whether the name
// is a histogram's _bucket series (which alone carries le).
func (idx metricIndex) lookup(name string) (spec metricSpec, bucket, ok bool) {
	if s, ok := idx[name]; ok {
		// A histogram is exposed only as its _bucket, _sum and _count.
		return s, false, s.typ != histogramType
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, found := strings.CutSuffix(name, suffix)
		if !found {
			continue
		}
		if s, ok := idx[base]; ok && s.typ == histogramType {
			return s, suffix == "_bucket", true
		}
	}
	return metricSpec{}, false, false
}

// labelNames lists the label names a series of the family may carry.
func (s metricSpec) labelNames(bucket bool) []string {
	names := slices.Clone(targetLabels)
	if s.perProvider {
		names = append(names, "tenant", "provider")
	}
	for l := range s.labels {
		names = append(names, l)
	}
	if bucket {
		names = append(names, "le")
	}
	return names
}

var plainAlternation = regexp.MustCompile(`^[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*$`)

// checkExpr parses a PromQL expression and checks every metric it selects,
// the label matchers on it, and the grouping labels of aggregations. It
// returns the metric names it found.
func (idx metricIndex) checkExpr(expr string) (names []string, errs []error) {
	e, err := promqlParser.ParseExpr(expr)
	if err != nil {
		return nil, []error{fmt.Errorf("parse %q: %w", expr, err)}
	}
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			name, nameErrs := idx.checkSelector(n)
			errs = append(errs, nameErrs...)
			if name != "" {
				names = append(names, name)
			}
		case *parser.AggregateExpr:
			if !n.Without {
				errs = append(errs, idx.checkGrouping(n.Grouping, n.Expr)...)
			}
		}
		return nil
	})
	return names, errs
}

// checkSelector checks one selector's metric name (its Name, or a __name__
// matcher) and its label matchers.
func (idx metricIndex) checkSelector(vs *parser.VectorSelector) (string, []error) {
	name := vs.Name
	var errs []error
	for _, m := range vs.LabelMatchers {
		if m.Name != model.MetricNameLabel {
			continue
		}
		switch m.Type {
		case labels.MatchEqual:
			name = m.Value
		default:
			// A pattern over names must match at least one exported name.
			matched := false
			for n := range idx {
				if m.Matches(n) {
					matched = true
				}
			}
			if !matched {
				errs = append(errs, fmt.Errorf("%s: matches no exported metric", m))
			}
		}
	}
	if name == "" {
		return "", errs
	}
	spec, bucket, ok := idx.lookup(name)
	if !ok {
		return name, append(errs, fmt.Errorf("metric %q is not exported by the Collector", name))
	}
	allowed := spec.labelNames(bucket)
	for _, m := range vs.LabelMatchers {
		if m.Name == model.MetricNameLabel {
			continue
		}
		if !slices.Contains(allowed, m.Name) {
			errs = append(errs, fmt.Errorf("%s: metric %q has no label %q (has %v)", vs, name, m.Name, allowed))
			continue
		}
		values := spec.labels[m.Name]
		if values == nil {
			continue
		}
		var got []string
		switch m.Type {
		case labels.MatchEqual, labels.MatchNotEqual:
			got = []string{m.Value}
		case labels.MatchRegexp, labels.MatchNotRegexp:
			if plainAlternation.MatchString(m.Value) {
				got = strings.Split(m.Value, "|")
			}
		}
		for _, v := range got {
			if !slices.Contains(values, v) {
				errs = append(errs, fmt.Errorf("%s: label %s of %q has no value %q (values %v)", vs, m.Name, name, v, values))
			}
		}
	}
	return name, errs
}

// checkGrouping checks that every label of a "by" clause is carried by
// every metric selected under the aggregation: a misspelt grouping label
// silently collapses all series into one.
func (idx metricIndex) checkGrouping(grouping []string, inner parser.Expr) []error {
	var errs []error
	parser.Inspect(inner, func(node parser.Node, _ []parser.Node) error {
		vs, ok := node.(*parser.VectorSelector)
		if !ok || vs.Name == "" {
			return nil
		}
		spec, bucket, ok := idx.lookup(vs.Name)
		if !ok {
			return nil // reported by checkSelector
		}
		allowed := spec.labelNames(bucket)
		for _, l := range grouping {
			if !slices.Contains(allowed, l) {
				errs = append(errs, fmt.Errorf("by (%s): metric %q has no label %q", strings.Join(grouping, ", "), vs.Name, l))
			}
		}
		return nil
	})
	return errs
}

// perProvider reports whether any of the names is a per-provider family.
func (idx metricIndex) perProvider(names []string) bool {
	for _, n := range names {
		if s, _, ok := idx.lookup(n); ok && s.perProvider {
			return true
		}
	}
	return false
}

// Timing of the success criterion: an operator sees a provider's
// problem within two minutes. The rules file asks for a scrape interval of
// at most assumedScrapeInterval.
const (
	detectionBudget       = 2 * time.Minute
	assumedScrapeInterval = 30 * time.Second
)

var severities = []string{"warning", "critical"}

var runbookPrefix = "docs/operations.md#"

// parseRules parses a rules file with Prometheus's own rule parser, which
// also parses each expression and each annotation template.
func parseRules(content []byte) (*rulefmt.RuleGroups, []error) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	return rulefmt.Parse(content, false, model.UTF8Validation, promqlParser, logger)
}

// checkRules checks a rules file: that Prometheus accepts it, that each
// alert names exported metrics, has a severity, a summary and description
// naming tenant and provider where the alert is per provider, and a
// runbook_url to an existing section of docs/operations.md (anchors).
func (idx metricIndex) checkRules(content []byte, anchors map[string]bool) []error {
	rgs, errs := parseRules(content)
	if len(errs) > 0 {
		return errs
	}
	if len(rgs.Groups) == 0 {
		return []error{fmt.Errorf("no rule groups")}
	}
	for _, g := range rgs.Groups {
		if g.Interval == 0 || time.Duration(g.Interval) > assumedScrapeInterval {
			errs = append(errs, fmt.Errorf("group %s: interval %v: set it, at most %v, so detection stays within %v", g.Name, g.Interval, assumedScrapeInterval, detectionBudget))
		}
		if len(g.Rules) == 0 {
			errs = append(errs, fmt.Errorf("group %s: no rules", g.Name))
		}
		for _, r := range g.Rules {
			what := r.Alert
			if what == "" {
				what = "record " + r.Record
			}
			names, exprErrs := idx.checkExpr(r.Expr)
			for _, err := range exprErrs {
				errs = append(errs, fmt.Errorf("%s: %w", what, err))
			}
			if len(names) == 0 {
				errs = append(errs, fmt.Errorf("%s: expression selects no metric", what))
			}
			if r.Alert == "" {
				continue
			}
			if !slices.Contains(severities, r.Labels["severity"]) {
				errs = append(errs, fmt.Errorf("%s: severity label %q, want one of %v", what, r.Labels["severity"], severities))
			}
			for _, a := range []string{"summary", "description"} {
				text := r.Annotations[a]
				if strings.TrimSpace(text) == "" {
					errs = append(errs, fmt.Errorf("%s: no %s annotation", what, a))
					continue
				}
				if idx.perProvider(names) {
					for _, l := range []string{"$labels.tenant", "$labels.provider"} {
						if !strings.Contains(text, l) {
							errs = append(errs, fmt.Errorf("%s: %s does not name %s", what, a, l))
						}
					}
				}
			}
			anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], runbookPrefix)
			if !ok || !anchors[anchor] {
				errs = append(errs, fmt.Errorf("%s: runbook_url %q is not %s<a section heading>", what, r.Annotations["runbook_url"], runbookPrefix))
			}
		}
	}
	return errs
}

// markdownAnchors returns the anchors GitHub derives from a Markdown file's
// headings: lower case, spaces to hyphens, punctuation other than - and _
// dropped.
func markdownAnchors(md string) map[string]bool {
	anchors := map[string]bool{}
	inFence := false
	for line := range strings.SplitSeq(md, "\n") {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
			continue
		}
		if inFence || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || ('a' <= r && r <= 'z') || ('0' <= r && r <= '9'):
				b.WriteRune(r)
			}
		}
		anchors[b.String()] = true
	}
	return anchors
}

// dashboard is the part of a Grafana dashboard the checks read.
type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []templateVar `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int        `json:"id"`
	Type       string     `json:"type"`
	Title      string     `json:"title"`
	Datasource datasource `json:"datasource"`
	Targets    []struct {
		RefID      string     `json:"refId"`
		Expr       string     `json:"expr"`
		Datasource datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type templateVar struct {
	Name  string          `json:"name"`
	Type  string          `json:"type"`
	Query json.RawMessage `json:"query"`
}

// query returns a query variable's query, in its string or object form.
func (v templateVar) query() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var o struct {
		Query string `json:"query"`
	}
	_ = json.Unmarshal(v.Query, &o)
	return o.Query
}

var (
	templateRef = regexp.MustCompile(`\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]`)
	labelValues = regexp.MustCompile(`^\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*$`)
	// Grafana's built-in duration variables, replaced by a duration.
	durationVars = []string{"__rate_interval", "__interval", "__range"}
)

// substitute replaces Grafana template variables so that the expression
// parses as PromQL: durations by 5m, the dashboard's own variables by a
// placeholder (they stand in label values). Any other variable is an error.
func substitute(expr string, defined map[string]bool) (string, []error) {
	var errs []error
	out := templateRef.ReplaceAllStringFunc(expr, func(ref string) string {
		m := templateRef.FindStringSubmatch(ref)
		name := m[1] + m[2] + m[3]
		switch {
		case slices.Contains(durationVars, name):
			return "5m"
		case defined[name]:
			return "placeholder"
		default:
			errs = append(errs, fmt.Errorf("%s: not a variable of the dashboard", ref))
			return ref
		}
	})
	return out, errs
}

// checkDashboard checks a Grafana dashboard: that it decodes, has the
// datasource, tenant and provider variables, that every panel has a title,
// an id of its own and at least one target using the ${datasource}
// variable, and that every target's expression (and every label_values
// query) names exported metrics.
func (idx metricIndex) checkDashboard(content []byte) []error {
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(content)))
	if err := dec.Decode(&d); err != nil {
		return []error{fmt.Errorf("decode: %w", err)}
	}
	if _, err := dec.Token(); err != io.EOF {
		return []error{fmt.Errorf("decode: data after the dashboard object")}
	}
	var errs []error
	if d.Title == "" || d.UID == "" {
		errs = append(errs, fmt.Errorf("title %q, uid %q: both must be set", d.Title, d.UID))
	}
	if d.SchemaVersion < 36 {
		errs = append(errs, fmt.Errorf("schemaVersion %d: want 36 or later", d.SchemaVersion))
	}

	defined := map[string]bool{}
	for _, v := range d.Templating.List {
		defined[v.Name] = true
	}
	want := map[string]string{"datasource": "datasource", "tenant": "query", "provider": "query"}
	for _, v := range d.Templating.List {
		if typ, ok := want[v.Name]; ok && typ == v.Type {
			delete(want, v.Name)
		}
		switch v.Type {
		case "datasource":
			if v.query() != "prometheus" {
				errs = append(errs, fmt.Errorf("variable %s: datasource type %q, want prometheus", v.Name, v.query()))
			}
		case "query":
			q, subErrs := substitute(v.query(), defined)
			errs = append(errs, subErrs...)
			m := labelValues.FindStringSubmatch(q)
			if m == nil {
				errs = append(errs, fmt.Errorf("variable %s: query %q is not label_values(<selector>, <label>)", v.Name, v.query()))
				continue
			}
			names, exprErrs := idx.checkExpr(m[1])
			errs = append(errs, exprErrs...)
			for _, n := range names {
				if s, bucket, ok := idx.lookup(n); ok && !slices.Contains(s.labelNames(bucket), m[2]) {
					errs = append(errs, fmt.Errorf("variable %s: metric %q has no label %q", v.Name, n, m[2]))
				}
			}
		}
	}
	for name, typ := range want {
		errs = append(errs, fmt.Errorf("no %s variable named %q", typ, name))
	}

	ids := map[int]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if ids[p.ID] {
				errs = append(errs, fmt.Errorf("panel %q: id %d is not unique", p.Title, p.ID))
			}
			ids[p.ID] = true
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if strings.TrimSpace(p.Title) == "" {
				errs = append(errs, fmt.Errorf("panel %d: no title", p.ID))
			}
			if len(p.Targets) == 0 {
				errs = append(errs, fmt.Errorf("panel %q: no target", p.Title))
			}
			for _, t := range p.Targets {
				ds := t.Datasource
				if ds.UID == "" {
					ds = p.Datasource
				}
				if ds.UID != "${datasource}" {
					errs = append(errs, fmt.Errorf("panel %q target %s: datasource %q, want ${datasource}", p.Title, t.RefID, ds.UID))
				}
				if strings.TrimSpace(t.Expr) == "" {
					errs = append(errs, fmt.Errorf("panel %q target %s: no expr", p.Title, t.RefID))
					continue
				}
				q, subErrs := substitute(t.Expr, defined)
				names, exprErrs := idx.checkExpr(q)
				for _, err := range append(subErrs, exprErrs...) {
					errs = append(errs, fmt.Errorf("panel %q target %s: %w", p.Title, t.RefID, err))
				}
				if len(names) == 0 && len(exprErrs) == 0 {
					errs = append(errs, fmt.Errorf("panel %q target %s: selects no metric", p.Title, t.RefID))
				}
			}
		}
	}
	walk(d.Panels)
	if len(d.Panels) == 0 {
		errs = append(errs, fmt.Errorf("no panels"))
	}
	return errs
}
