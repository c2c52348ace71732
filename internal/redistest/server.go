package redistest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// startTimeout bounds how long a private redis-server may take to
	// answer PING, and a new cluster to report cluster_state:ok.
	startTimeout = 30 * time.Second
	// pollInterval is the pause between two checks of a server we
	// started and are waiting for.
	pollInterval = 20 * time.Millisecond
	// maxPort keeps a node's cluster bus port (its port + 10000) valid.
	maxPort = 55535
)

// StartServer starts a private redis-server (no persistence) on a free
// loopback port and returns its address, a stop function that kills it,
// and a restart function that starts it again, empty, on the same port
// (killing it first if it runs). It returns once the server answers PING.
// The server is killed when the test ends.
//
// It skips the test when JWKSCACHE_REDIS_ADDR is empty or the
// redis-server binary is not installed.
func StartServer(t testing.TB) (addr string, stop func(), restart func()) {
	t.Helper()
	Addr(t)
	bin := lookPath(t, "redis-server")
	s := startNode(t, bin, t.TempDir(), false)
	return s.addr(), s.stop, s.restart
}

// StartCluster starts a Redis Cluster of three masters (no replicas, no
// persistence) on free loopback ports, and returns the addresses of its
// nodes once every node reports cluster_state:ok. The nodes are killed
// when the test ends.
//
// It skips the test when JWKSCACHE_REDIS_ADDR is empty or the
// redis-server or redis-cli binary is not installed.
func StartCluster(t testing.TB) (addrs []string) {
	t.Helper()
	Addr(t)
	bin := lookPath(t, "redis-server")
	cli := lookPath(t, "redis-cli")
	dir := t.TempDir()
	taken := map[int]bool{}
	for range 3 {
		n := startNodeAvoiding(t, bin, dir, true, taken)
		addrs = append(addrs, n.addr())
	}

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create %v: %v\n%s", addrs, err, out)
	}

	deadline := time.Now().Add(startTimeout)
	for _, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a, MaxRetries: -1, DialTimeout: time.Second})
		for {
			info, err := c.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				_ = c.Close()
				t.Fatalf("cluster node %s not ok after %v: %v\n%s", a, startTimeout, err, info)
			}
			time.Sleep(pollInterval) // polling a server we started
		}
		_ = c.Close()
	}
	return addrs
}

func lookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("skipping: %s is not installed (%v); install Redis (e.g. apt-get install redis-server) to run this test", name, err)
	}
	return p
}

// node is one redis-server process that we started.
type node struct {
	t       testing.TB
	bin     string
	dir     string
	port    int
	cluster bool

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	log    string        // the file that receives its output
}

func (n *node) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(n.port)) }

// startNode starts a node on a free port, trying a few ports in case
// another process takes the one picked before the server binds it.
func startNode(t testing.TB, bin, dir string, cluster bool) *node {
	t.Helper()
	return startNodeAvoiding(t, bin, dir, cluster, map[int]bool{})
}

func startNodeAvoiding(t testing.TB, bin, dir string, cluster bool, taken map[int]bool) *node {
	t.Helper()
	var lastErr error
	for range 5 {
		port, err := freePort(cluster, taken)
		if err != nil {
			t.Fatal(err)
		}
		n := &node{t: t, bin: bin, dir: dir, port: port, cluster: cluster}
		if lastErr = n.start(); lastErr == nil {
			taken[port] = true
			taken[port+10000] = true
			t.Cleanup(n.stop)
			return n
		}
	}
	t.Fatalf("starting redis-server: %v", lastErr)
	return nil
}

// start starts the process and waits until it answers PING.
func (n *node) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return errors.New("already running")
	}
	args := []string{
		"--port", strconv.Itoa(n.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--dir", n.dir,
	}
	if n.cluster {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(n.dir, fmt.Sprintf("nodes-%d.conf", n.port)),
			"--cluster-node-timeout", "5000")
	}
	n.log = filepath.Join(n.dir, fmt.Sprintf("redis-%d.log", n.port))
	logf, err := os.OpenFile(n.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(n.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return err
	}
	_ = logf.Close() // the child has its own descriptor
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	n.cmd, n.exited = cmd, exited

	c := redis.NewClient(&redis.Options{Addr: n.addr(), MaxRetries: -1, DialTimeout: time.Second})
	defer func() { _ = c.Close() }()
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			n.cmd = nil
			return fmt.Errorf("redis-server on port %d exited: %s", n.port, n.tail())
		default:
		}
		if time.Now().After(deadline) {
			n.killLocked()
			return fmt.Errorf("redis-server on port %d does not answer PING after %v: %v\n%s", n.port, startTimeout, err, n.tail())
		}
		time.Sleep(pollInterval) // polling a server we started
	}
}

func (n *node) stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.killLocked()
}

func (n *node) killLocked() {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.exited
	n.cmd = nil
}

func (n *node) restart() {
	n.t.Helper()
	n.stop()
	if err := n.start(); err != nil {
		n.t.Fatalf("restarting redis-server: %v", err)
	}
}

// tail returns the end of the server's output, for error messages.
func (n *node) tail() string {
	b, _ := os.ReadFile(n.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(bytes.TrimSpace(b))
}

// freePort returns a loopback port that was free a moment ago and is not
// in taken; for a cluster node, below maxPort and with its bus port (port
// + 10000) free and not taken too.
func freePort(cluster bool, taken map[int]bool) (int, error) {
	for range 200 {
		port, err := listenFree(0)
		if err != nil {
			return 0, err
		}
		if taken[port] || (cluster && (port >= maxPort || taken[port+10000])) {
			continue
		}
		if cluster {
			if _, err := listenFree(port + 10000); err != nil {
				continue
			}
		}
		return port, nil
	}
	return 0, errors.New("no free port pair found")
}

// listenFree listens on 127.0.0.1:port (0: any), closes, and returns the
// port.
func listenFree(port int) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return 0, err
	}
	p := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return p, nil
}
