package caclient

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/secrets/secretstest"
)

var update = flag.Bool("update", false, "rewrite the fuzz seeds under testdata/fuzz/FuzzParseChain")

// testChain issues a leaf, intermediate, root chain and returns it with its PEM elements.
func testChain(t testing.TB) ([]*x509.Certificate, []string) {
	t.Helper()
	ca := secretstest.New(t)
	id, err := identity.New(identity.DefaultTrustDomain, "ns", "sa")
	if err != nil {
		t.Fatal(err)
	}
	csr := testCSR(t, id)
	chain, err := ca.Issue(csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return chain, secretstest.EncodePEM(chain)
}

func TestParseChain(t *testing.T) {
	chain, p := testChain(t)
	leaf, inter, root := p[0], p[1], p[2]
	csrPEM := string(testCSR(t, mustID(t)))
	badDER := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")}))
	headers := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: chain[0].Raw}))
	tests := []struct {
		name    string
		elems   []string
		want    []*x509.Certificate
		wantErr string
	}{
		{name: "one per element", elems: []string{leaf, inter, root}, want: chain},
		{name: "all in one element", elems: []string{leaf + inter + root}, want: chain},
		{name: "mixed", elems: []string{leaf, inter + root}, want: chain},
		{name: "no trailing newlines", elems: []string{strings.TrimSpace(leaf), strings.TrimSpace(inter) + "\n" + strings.TrimSpace(root)}, want: chain},
		{name: "surrounding whitespace", elems: []string{"\n  " + leaf + "\n\n", "\t" + inter, root + "\r\n"}, want: chain},
		{name: "CRLF line endings", elems: []string{strings.ReplaceAll(leaf, "\n", "\r\n")}, want: chain[:1]},
		{name: "leaf only", elems: []string{leaf}, want: chain[:1]},
		{name: "nil", elems: nil, wantErr: "empty certificate chain"},
		{name: "empty element", elems: []string{""}, wantErr: "element 0 holds no certificate"},
		{name: "blank element in the middle", elems: []string{leaf, " \n", root}, wantErr: "element 1 holds no certificate"},
		{name: "trailing garbage", elems: []string{leaf + "garbage"}, wantErr: "unexpected data after 1 certificate(s)"},
		{name: "leading garbage", elems: []string{"garbage\n" + leaf}, wantErr: "unexpected data after 0 certificate(s)"},
		{name: "garbage in a later element", elems: []string{leaf, inter + "x"}, wantErr: "chain element 1: unexpected data"},
		{name: "CSR instead of certificate", elems: []string{leaf, csrPEM}, wantErr: `PEM block "CERTIFICATE REQUEST", want CERTIFICATE`},
		{name: "not DER", elems: []string{badDER}, wantErr: "parsing certificate 0"},
		{name: "PEM headers", elems: []string{headers}, wantErr: "PEM block with headers"},
		{name: "truncated PEM", elems: []string{leaf[:len(leaf)/2]}, wantErr: "malformed PEM block"},
		{name: "malformed block before a good one", elems: []string{"-----BEGIN CERTIFICATE-----\n!!!\n" + leaf}, wantErr: "malformed PEM block"},
		{name: "too long", elems: []string{strings.Repeat(leaf, maxChainLen+1)}, wantErr: "longer than 32"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseChain(tt.elems)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseChain = %v, want error containing %q", err, tt.wantErr)
				}
				if got != nil {
					t.Errorf("ParseChain returned %d certificates with an error", len(got))
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseChain: %v", err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d certificates, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if !got[i].Equal(tt.want[i]) {
					t.Errorf("certificate %d differs (order must be kept)", i)
				}
			}
		})
	}
}

// FuzzParseChain feeds ParseChain elements separated by NUL bytes. Whatever it accepts must
// hold exactly one certificate per PEM block and survive re-encoding.
func FuzzParseChain(f *testing.F) {
	f.Add("")
	f.Add("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
	f.Fuzz(func(t *testing.T, in string) {
		chain, err := ParseChain(strings.Split(in, "\x00"))
		if err != nil {
			if chain != nil {
				t.Fatalf("certificates returned with error %v", err)
			}
			return
		}
		if len(chain) == 0 || len(chain) > maxChainLen {
			t.Fatalf("accepted a chain of %d certificates", len(chain))
		}
		if n := strings.Count(in, "-----BEGIN"); n != len(chain) {
			t.Fatalf("%d certificates from %d PEM blocks", len(chain), n)
		}
		again, err := ParseChain(secretstest.EncodePEM(chain))
		if err != nil {
			t.Fatalf("re-encoded chain does not parse: %v", err)
		}
		for i := range chain {
			if !bytes.Equal(chain[i].Raw, again[i].Raw) {
				t.Fatalf("certificate %d changed on re-encoding", i)
			}
		}
	})
}

// fuzzSeeds are the committed corpus: names starting "valid-" must parse, the others must
// not. Run with -update to rewrite them.
func fuzzSeeds(t *testing.T) map[string][]string {
	chain, p := testChain(t)
	leaf, inter, root := p[0], p[1], p[2]
	csrPEM := string(testCSR(t, mustID(t)))
	return map[string][]string{
		"valid-one-per-element":        {leaf, inter, root},
		"valid-one-element":            {leaf + inter + root},
		"valid-mixed-no-newline":       {strings.TrimSpace(leaf), inter + root},
		"valid-crlf":                   {strings.ReplaceAll(leaf+inter, "\n", "\r\n")},
		"invalid-empty-element":        {leaf, "", root},
		"invalid-trailing-garbage":     {leaf, root + "garbage\n"},
		"invalid-leading-garbage":      {"xx" + leaf},
		"invalid-csr":                  {csrPEM},
		"invalid-not-der":              {string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[0].Raw[:40]}))},
		"invalid-truncated":            {leaf[:len(leaf)-30]},
		"invalid-malformed-then-valid": {"-----BEGIN CERTIFICATE-----\n!!!\n" + leaf},
	}
}

func TestFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzParseChain")
	if *update {
		for name, elems := range fuzzSeeds(t) {
			body := "go test fuzz v1\nstring(" + strconv.Quote(strings.Join(elems, "\x00")) + ")\n"
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	files, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 8 {
		t.Fatalf("%d seeds in %s, want the committed corpus (regenerate with -update)", len(files), dir)
	}
	for _, f := range files {
		t.Run(f.Name(), func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(dir, f.Name()))
			if err != nil {
				t.Fatal(err)
			}
			lit, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "go test fuzz v1\nstring(")
			if !ok {
				t.Fatalf("not a one-string fuzz seed: %q", b)
			}
			in, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
			if err != nil {
				t.Fatal(err)
			}
			_, err = ParseChain(strings.Split(in, "\x00"))
			if valid := strings.HasPrefix(f.Name(), "valid-"); valid != (err == nil) {
				t.Errorf("ParseChain = %v; seed is named valid: %v", err, valid)
			}
		})
	}
}
