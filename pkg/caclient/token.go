package caclient

import (
	"context"
	"fmt"
	"os"
	"strings"
)

// maxTokenSize bounds the token file read.
const maxTokenSize = 64 << 10

// fileToken returns a token source that reads path at every call.
func fileToken(path string) func(context.Context) (string, error) {
	return func(context.Context) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("reading token file: %w", err)
		}
		if len(b) > maxTokenSize {
			return "", fmt.Errorf("token file %s is larger than %d bytes", path, maxTokenSize)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("token file %s is empty (hint: is the projected ServiceAccount token mounted?)", path)
		}
		return tok, nil
	}
}
