//go:build !unix

package hbone

import "errors"

var errTooManyFiles = errors.New("unused")
