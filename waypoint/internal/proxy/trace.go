package proxy

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
)

// newRequestID returns a random UUID (version 4), as Envoy generates x-request-id. The
// bits come from math/rand/v2's ChaCha8 generator, seeded by the OS: unpredictable
// enough for an id, without a system call per request.
func newRequestID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:16], rand.Uint64())
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:16])
	return string(s[:])
}
