package redistest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// envChild marks the test process that TestClient* start to call Client
// with a given JWKSCACHE_REDIS_ADDR.
const envChild = "JWKSCACHE_REDISTEST_CHILD"

// TestClientChild is not a test of its own: TestClientSkipsWithoutAddr
// and TestClientFailsWhenUnreachable run it in a child process.
func TestClientChild(t *testing.T) {
	if os.Getenv(envChild) == "" {
		t.Skip("run by TestClientSkipsWithoutAddr and TestClientFailsWhenUnreachable in a child process")
	}
	Client(t)
	fmt.Println("CLIENT-OK")
}

func runChild(t *testing.T, addr string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestClientChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envChild+"=1", EnvAddr+"="+addr)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestClientSkipsWithoutAddr(t *testing.T) {
	out, err := runChild(t, "")
	if err != nil {
		t.Fatalf("child failed without %s: %v\n%s", EnvAddr, err, out)
	}
	if !strings.Contains(out, "--- SKIP: TestClientChild") || !strings.Contains(out, EnvAddr+" is not set") {
		t.Fatalf("child did not skip with a clear message:\n%s", out)
	}
}

func TestClientFailsWhenUnreachable(t *testing.T) {
	port, err := listenFree(0) // free a moment ago: nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	out, err := runChild(t, addr)
	if err == nil {
		t.Fatalf("child passed with an unreachable %s=%s:\n%s", EnvAddr, addr, out)
	}
	if !strings.Contains(out, "--- FAIL: TestClientChild") || !strings.Contains(out, "Redis is unreachable") {
		t.Fatalf("child did not fail with a clear message:\n%s", out)
	}
}

func TestClient(t *testing.T) {
	c := Client(t)
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestPrefixIsUniqueAndCleansUp(t *testing.T) {
	c := Client(t)
	ctx := context.Background()
	var prefixes []string
	t.Run("uses", func(t *testing.T) {
		for range 2 {
			p := Prefix(t, c)
			prefixes = append(prefixes, p)
			for i := range 3 {
				if err := c.Set(ctx, fmt.Sprintf("%sk%d", p, i), "v", 0).Err(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if prefixes[0] == prefixes[1] {
			t.Fatalf("two prefixes are equal: %q", prefixes[0])
		}
		if n, err := CountKeys(ctx, c, prefixes[0]+"*"); err != nil || n != 3 {
			t.Fatalf("CountKeys = %d, %v; want 3", n, err)
		}
	})
	for _, p := range prefixes {
		if n, err := CountKeys(ctx, c, p+"*"); err != nil || n != 0 {
			t.Fatalf("after the test, %d keys left under %q (%v)", n, p, err)
		}
	}
}

func TestStartServerStopRestart(t *testing.T) {
	addr, stop, restart := StartServer(t)
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	stop()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING answered after stop")
	}
	stop() // idempotent
	restart()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after restart: %v", err)
	}
	if err := c.Get(ctx, "k").Err(); err != redis.Nil {
		t.Fatalf("GET after restart = %v; want an empty server", err)
	}
}

func TestStartCluster(t *testing.T) {
	addrs := StartCluster(t)
	if len(addrs) != 3 {
		t.Fatalf("StartCluster = %v", addrs)
	}
	c := ClusterClient(t, addrs)
	ctx := context.Background()
	nodes := map[string]bool{}
	for i := range 30 {
		k := fmt.Sprintf("key-%d", i)
		if err := c.Set(ctx, k, "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		n, err := c.MasterForKey(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		nodes[n.Options().Addr] = true
	}
	if len(nodes) != 3 {
		t.Fatalf("30 keys landed on %d masters, want 3", len(nodes))
	}
	if n, err := CountKeys(ctx, c, "key-*"); err != nil || n != 30 {
		t.Fatalf("CountKeys = %d, %v; want 30", n, err)
	}
	if err := DeleteKeys(ctx, c, "key-*"); err != nil {
		t.Fatal(err)
	}
	if n, err := CountKeys(ctx, c, "key-*"); err != nil || n != 0 {
		t.Fatalf("CountKeys after DeleteKeys = %d, %v", n, err)
	}
}
