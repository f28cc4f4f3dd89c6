// Command pause is the local cluster's pod sandbox ("pause") process: the first process of
// every pod, holding its namespaces open. It sleeps until SIGINT or SIGTERM and, as PID 1 of
// a pod that shares its PID namespace, reaps orphaned children. It is the test bed's build of
// what Kubernetes' pause image does, not a general init system.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
