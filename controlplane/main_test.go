package controlplane_test

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
)

// covered records the operation and status of every exchange checked
// against the contract.
var covered = struct {
	sync.Mutex
	m map[string]bool
}{m: make(map[string]bool)}

func cover(method, path string, status int) {
	covered.Lock()
	covered.m[method+" "+path+" "+strconv.Itoa(status)] = true
	covered.Unlock()
}

// TestMain checks, after a run of every test, that the tests met every
// status code of every operation of the contract.
func TestMain(m *testing.M) {
	code := m.Run()
	if f := flag.Lookup("test.run"); code != 0 || f == nil || f.Value.String() != "" || testing.Short() {
		os.Exit(code)
	}
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		os.Exit(code)
	}
	c, err := loadChecker()
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	var missing []string
	for path, item := range c.Doc().Paths.Map() {
		for method, op := range item.Operations() {
			for status := range op.Responses.Map() {
				if key := method + " " + path + " " + status; !covered.m[key] {
					missing = append(missing, key)
				}
			}
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		fmt.Printf("FAIL: no test met these answers of the contract:\n%q\n", missing)
		os.Exit(1)
	}
	os.Exit(code)
}
