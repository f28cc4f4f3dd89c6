package images

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// criNamespace is the containerd namespace the CRI plugin (and so the kubelet) uses.
const criNamespace = "k8s.io"

// Load imports each image into the containerd listening on socket, in the CRI namespace,
// unless that containerd already has the same manifest under the image's reference.
func Load(ctx context.Context, socket string, imgs ...Image) error {
	for _, img := range imgs {
		if img.Archive == "" {
			return fmt.Errorf("image %q has no archive", img.Ref)
		}
		have, err := digestOf(ctx, socket, img.Ref)
		if err != nil {
			return err
		}
		if have == img.Digest {
			continue
		}
		cmd := exec.CommandContext(ctx, "ctr", "--address", socket, "--namespace", criNamespace,
			"images", "import", img.Archive)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("importing %s (%s): %v: %s", img.Ref, img.Archive, err, strings.TrimSpace(string(out)))
		}
		if have, err = digestOf(ctx, socket, img.Ref); err != nil {
			return err
		}
		if have != img.Digest {
			return fmt.Errorf("importing %s: containerd has manifest %q after the import, want %s", img.Ref, have, img.Digest)
		}
	}
	return nil
}

// digestOf returns the manifest digest containerd has for ref, or "" if it has no such image.
func digestOf(ctx context.Context, socket, ref string) (string, error) {
	cmd := exec.CommandContext(ctx, "ctr", "--address", socket, "--namespace", criNamespace, "images", "ls", "name=="+ref)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("listing images of containerd %s: %v: %s", socket, err, strings.TrimSpace(stderr.String()))
	}
	return parseImageList(string(out), ref), nil
}

// parseImageList finds ref's digest in `ctr images ls` output (columns REF TYPE DIGEST ...).
func parseImageList(out, ref string) string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == ref {
			return f[2]
		}
	}
	return ""
}
