package boltstore_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jwkscache/jwkscache/store/boltstore"
	"go.etcd.io/bbolt"
)

// crashEnv names the database file to the child process of TestCrash.
const crashEnv = "BOLTSTORE_CRASH_CHILD_DB"

// TestCrash kills a process that is writing to the store (SIGKILL, no
// chance to clean up) and checks that every write it reported as returned
// is there, byte for byte, in a file that opens cleanly.
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a child process")
	}
	const minCommits = 200
	path := filepath.Join(t.TempDir(), "crash.db")

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// A safety net, not a wait: a child stuck before minCommits is killed,
	// which ends the reads below.
	watchdog := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
	defer watchdog.Stop()

	// The child prints i once the writes of its round i have returned.
	last := -1
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		i, err := strconv.Atoi(lines.Text())
		if err != nil || i != last+1 {
			cmd.Process.Kill()
			t.Fatalf("child printed %q after %d", lines.Text(), last)
		}
		last = i
		if last+1 == minCommits {
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Lines already in the pipe when the kill landed count too.
	err = cmd.Wait()
	if last+1 < minCommits {
		t.Fatalf("child reported %d commits, then exited (%v); stderr:\n%s", last+1, err, stderr.String())
	}
	t.Logf("child killed after reporting %d rounds (%v)", last+1, err)

	// The file opens cleanly and bbolt's own consistency check finds
	// nothing.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatalf("bbolt cannot open the file after the crash: %v", err)
	}
	err = db.View(func(tx *bbolt.Tx) error {
		var errs []string
		for err := range tx.Check() {
			errs = append(errs, err.Error())
		}
		if len(errs) > 0 {
			return fmt.Errorf("tx.Check:\n%s", strings.Join(errs, "\n"))
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	s := open(t, path)
	regs, err := s.LoadRegistrations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	saved := make(map[string]bool, len(regs))
	for _, r := range regs {
		saved[string(r)] = true
	}
	for i := range last + 1 {
		if !saved[string(crashRecord("reg", i))] {
			t.Fatalf("registration of round %d (reported committed) is missing or damaged", i)
		}
		got, err := s.LoadSnapshot(ctx, "tenant", crashProvider(i))
		if err != nil || !bytes.Equal(got, crashRecord("snap", i)) {
			t.Fatalf("snapshot of round %d (reported committed): %d bytes, %v", i, len(got), err)
		}
	}
	// The record replaced every round holds the last reported round, or
	// the next one if the kill came between its write and its report.
	got, err := s.LoadSnapshot(ctx, "tenant", "latest")
	if err != nil || !bytes.Equal(got, crashRecord("latest", last)) && !bytes.Equal(got, crashRecord("latest", last+1)) {
		t.Fatalf("the replaced record after round %d: %.40q..., %v", last, got, err)
	}
}

// TestHelperProcess is TestCrash's child: it writes rounds of records
// until it is killed (or its stdout is gone) and reports each round once
// its writes have returned. Outside TestCrash it does nothing.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv(crashEnv)
	if path == "" {
		return
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	s, err := boltstore.Open(path)
	if err != nil {
		fail(err)
	}
	expireAt := time.Now().Add(24 * time.Hour)
	for i := range 1_000_000 { // bounded, should the parent fail to kill it
		if err := s.SaveRegistration(ctx, "tenant", crashProvider(i), crashRecord("reg", i)); err != nil {
			fail(err)
		}
		if err := s.SaveSnapshot(ctx, "tenant", crashProvider(i), crashRecord("snap", i), expireAt); err != nil {
			fail(err)
		}
		if err := s.SaveSnapshot(ctx, "tenant", "latest", crashRecord("latest", i), expireAt); err != nil {
			fail(err)
		}
		// os.Stdout is unbuffered: the line is in the pipe when this
		// returns. A write to a pipe the parent closed kills the child
		// (SIGPIPE).
		if _, err := fmt.Println(i); err != nil {
			fail(err)
		}
	}
	fail(fmt.Errorf("never killed"))
}

func crashProvider(i int) string { return fmt.Sprintf("p%06d", i) }

// crashRecord is the record of kind for round i: 100 to about 6,000 bytes
// that differ from round to round throughout, so that records of various
// sizes fill and split pages, and a torn or misplaced one shows.
func crashRecord(kind string, i int) []byte {
	head := fmt.Sprintf("%s-%d;", kind, i)
	n := 100 + i*977%6000
	return []byte((strings.Repeat(head, n/len(head)+1))[:n])
}
