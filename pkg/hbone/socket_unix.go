//go:build unix

package hbone

import "syscall"

// writeNonblocking is one write(2) to a non-blocking socket: the bytes it took, 0 if it
// would block or failed.
func writeNonblocking(fd uintptr, p []byte) int {
	for {
		n, err := syscall.Write(int(fd), p)
		if err == syscall.EINTR {
			continue
		}
		return max(n, 0)
	}
}
