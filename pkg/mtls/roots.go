package mtls

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

// ReadRoots reads the mesh root certificates from a PEM file (Istio mounts the
// istio-ca-root-cert ConfigMap's root-cert.pem). A file without a certificate is an error.
func ReadRoots(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading mesh root certificates: %w", err)
	}
	var roots []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		roots = append(roots, c)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return roots, nil
}
