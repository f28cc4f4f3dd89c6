package caclient

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// maxChainLen bounds the certificates accepted in one response.
const maxChainLen = 32

// ParseChain parses the cert_chain field of an IstioCertificateResponse: each element
// holds one or more PEM CERTIFICATE blocks (surrounding whitespace allowed), and the
// result keeps their order, leaf first and root last. It rejects an empty chain, an
// element without a certificate, other PEM block types, PEM headers, certificates that do
// not parse and any other data. It does not verify signatures or names.
func ParseChain(elems []string) ([]*x509.Certificate, error) {
	if len(elems) == 0 {
		return nil, errors.New("empty certificate chain")
	}
	var chain []*x509.Certificate
	for i, s := range elems {
		rest := []byte(s)
		n := 0
		for {
			rest = bytes.TrimLeft(rest, " \t\r\n")
			if len(rest) == 0 {
				break
			}
			if !bytes.HasPrefix(rest, []byte("-----BEGIN ")) {
				return nil, fmt.Errorf("chain element %d: unexpected data after %d certificate(s), want only PEM CERTIFICATE blocks", i, n)
			}
			block, r := pem.Decode(rest)
			// pem.Decode skips a malformed block to find a later one; refuse that.
			if block == nil || bytes.Count(rest[:len(rest)-len(r)], []byte("-----BEGIN")) != 1 {
				return nil, fmt.Errorf("chain element %d: malformed PEM block after %d certificate(s)", i, n)
			}
			if block.Type != "CERTIFICATE" {
				return nil, fmt.Errorf("chain element %d: PEM block %q, want CERTIFICATE", i, block.Type)
			}
			if len(block.Headers) != 0 {
				return nil, fmt.Errorf("chain element %d: PEM block with headers", i)
			}
			if len(chain) == maxChainLen {
				return nil, fmt.Errorf("certificate chain longer than %d", maxChainLen)
			}
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("chain element %d: parsing certificate %d: %w", i, n, err)
			}
			chain = append(chain, cert)
			n++
			rest = r
		}
		if n == 0 {
			return nil, fmt.Errorf("chain element %d holds no certificate", i)
		}
	}
	return chain, nil
}
