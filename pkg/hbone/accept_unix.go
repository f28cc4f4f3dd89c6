//go:build unix

package hbone

import "syscall"

// errTooManyFiles is the accept error worth retrying after a pause.
var errTooManyFiles error = syscall.EMFILE
