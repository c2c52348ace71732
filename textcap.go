package jwkscache

import (
	"strconv"

	"github.com/jwkscache/jwkscache/internal/textcap"
)

// Upstream data (key ids, issuers, status lines, parser messages) ends up in
// error texts, ProviderStatus and log attributes. Everything derived from it
// is capped, so a hostile document cannot turn into megabytes of error text
// per refresh (issue 6).
const (
	// maxErrorText caps an error text or log attribute derived from
	// upstream data.
	maxErrorText = 1024
	// maxShownID caps a kid or issuer quoted inside an error text.
	maxShownID = 64
)

// capText returns s made valid UTF-8 (invalid bytes become U+FFFD, so that
// quoting cannot triple its size) and cut at a rune boundary to at most
// about maxErrorText bytes; a cut text ends in a visible marker saying how
// much was left out.
func capText(s string) string { return capTo(s, maxErrorText) }

// showID returns id quoted for an error text, valid UTF-8, and cut visibly
// after maxShownID bytes.
func showID(id string) string { return strconv.Quote(capTo(id, maxShownID)) }

func capTo(s string, limit int) string { return textcap.Cap(s, limit) }
