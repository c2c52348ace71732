package redistest

import "syscall"

// sysProcAttr has the kernel kill a redis-server we started if the test
// process dies without its cleanups (a panic, a timeout, a SIGKILL).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
