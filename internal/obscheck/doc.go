// Package obscheck holds the checks of the observability artefacts in docs/:
// the Prometheus alerting rules (docs/prometheus-alerts.yaml) and the Grafana
// dashboard (docs/grafana-dashboard.json). Its tests parse them with
// Prometheus's own rule and PromQL parsers and check that every metric they
// use is one the Collector exports.
//
// It is a module of its own so that the library's go.mod never requires
// github.com/prometheus/prometheus. The root's `go test ./...` skips it; CI
// runs it with
//
//	(cd internal/obscheck && go test ./...)
package obscheck
