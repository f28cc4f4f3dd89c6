package images

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testSpec(t *testing.T, content string) Spec {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "app")
	if err := os.WriteFile(bin, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return Spec{
		Ref: "ambient-lite.local/app:dev",
		Files: []File{
			{Path: "/usr/local/bin/app", Src: bin},
			{Path: "/etc/app.conf", Data: []byte("x=1\n")},
			{Path: "/bin/sh", Link: "busybox"},
			{Path: "/tmp", Mode: 0o1777},
		},
		Entrypoint: []string{"/usr/local/bin/app"},
		Env:        []string{"PATH=/bin"},
	}
}

// TestWriteIsDeterministicAndCached: the same inputs give the same manifest and reuse the
// archive; a changed input gives a new one and the old one is removed.
func TestWriteIsDeterministicAndCached(t *testing.T) {
	dir := t.TempDir()
	spec := testSpec(t, "v1")
	a, err := Write(spec, dir)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(a.Archive)
	time.Sleep(10 * time.Millisecond)
	b, err := Write(spec, dir)
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(b.Archive)
	if a != b || !st.ModTime().Equal(st2.ModTime()) {
		t.Errorf("second Write = %+v (mtime %v), want the cached %+v (mtime %v)", b, st2.ModTime(), a, st.ModTime())
	}
	// A fresh directory rebuilds from scratch, to the same digest.
	c, err := Write(spec, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if c.Digest != a.Digest {
		t.Errorf("rebuilt digest %s, want %s: the archive depends on more than its inputs", c.Digest, a.Digest)
	}
	changed := testSpec(t, "v2")
	d, err := Write(changed, dir)
	if err != nil {
		t.Fatal(err)
	}
	if d.Digest == a.Digest || d.Archive == a.Archive {
		t.Errorf("changed input kept digest %s / archive %s", d.Digest, d.Archive)
	}
	if _, err := os.Stat(a.Archive); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("old archive %s still there after the image changed (%v)", a.Archive, err)
	}
}

// TestArchiveLayout reads the archive as `ctr images import` does: an OCI layout whose index
// names the image, one uncompressed layer with root-owned entries at a fixed time.
func TestArchiveLayout(t *testing.T) {
	img, err := Write(testSpec(t, "v1"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	files := untar(t, mustOpen(t, img.Archive))
	var layoutFile struct{ ImageLayoutVersion string }
	if err := json.Unmarshal(files["oci-layout"], &layoutFile); err != nil || layoutFile.ImageLayoutVersion != "1.0.0" {
		t.Errorf("oci-layout = %q (%v), want version 1.0.0", files["oci-layout"], err)
	}
	var index struct {
		Manifests []struct {
			MediaType, Digest string
			Annotations       map[string]string
			Platform          struct{ OS, Architecture string }
		}
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 1 {
		t.Fatalf("index has %d manifests", len(index.Manifests))
	}
	m := index.Manifests[0]
	if m.Digest != img.Digest || m.Annotations["io.containerd.image.name"] != img.Ref ||
		m.Annotations["org.opencontainers.image.ref.name"] != img.Ref || m.Platform.OS != "linux" || m.Platform.Architecture != "amd64" {
		t.Errorf("index manifest = %+v, want digest %s named %s for linux/amd64", m, img.Digest, img.Ref)
	}
	var manifest struct {
		Config struct{ Digest string }
		Layers []struct{ MediaType, Digest string }
	}
	if err := json.Unmarshal(files["blobs/sha256/"+strings.TrimPrefix(m.Digest, "sha256:")], &manifest); err != nil {
		t.Fatal(err)
	}
	if len(manifest.Layers) != 1 || manifest.Layers[0].MediaType != "application/vnd.oci.image.layer.v1.tar" {
		t.Fatalf("layers = %+v, want one uncompressed OCI layer", manifest.Layers)
	}
	var config struct {
		Architecture, OS string
		Config           struct{ Entrypoint, Env []string }
	}
	if err := json.Unmarshal(files["blobs/sha256/"+strings.TrimPrefix(manifest.Config.Digest, "sha256:")], &config); err != nil {
		t.Fatal(err)
	}
	if config.OS != "linux" || strings.Join(config.Config.Entrypoint, " ") != "/usr/local/bin/app" || strings.Join(config.Config.Env, " ") != "PATH=/bin" {
		t.Errorf("config = %+v", config)
	}
	layer := files["blobs/sha256/"+strings.TrimPrefix(manifest.Layers[0].Digest, "sha256:")]
	tr := tar.NewReader(strings.NewReader(string(layer)))
	got := map[string]string{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(epoch) {
			t.Errorf("%s: uid %d gid %d mtime %v, want root at %v", h.Name, h.Uid, h.Gid, h.ModTime, epoch)
		}
		b, _ := io.ReadAll(tr)
		got[h.Name] = fmt.Sprintf("%c %04o %s%s", h.Typeflag, h.Mode, h.Linkname, b)
	}
	want := map[string]string{
		"bin/":              "5 0755 ",
		"bin/sh":            "2 0777 busybox",
		"etc/":              "5 0755 ",
		"etc/app.conf":      "0 0644 x=1\n",
		"tmp/":              "5 1777 ",
		"usr/":              "5 0755 ",
		"usr/local/":        "5 0755 ",
		"usr/local/bin/":    "5 0755 ",
		"usr/local/bin/app": "0 0755 v1",
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("layer entry %s = %q, want %q", name, got[name], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("layer has %d entries %v, want %d", len(got), got, len(want))
	}
}

func TestWriteRejectsBadFiles(t *testing.T) {
	for _, tc := range []struct {
		name string
		file File
		want string
	}{
		{"relative path", File{Path: "bin/x", Data: []byte("x")}, "not absolute and clean"},
		{"unclean path", File{Path: "/bin/../x", Data: []byte("x")}, "not absolute and clean"},
		{"missing source", File{Path: "/x", Src: "/nonexistent/binary"}, "/nonexistent/binary"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Write(Spec{Ref: "r/x:dev", Files: []File{tc.file}}, t.TempDir())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Write = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestBuilderErrors(t *testing.T) {
	b := &Builder{RepoRoot: t.TempDir(), ToolBin: t.TempDir(), OutDir: t.TempDir()}
	if _, err := b.Build(context.Background(), "nosuch"); err == nil || !strings.Contains(err.Error(), `unknown image "nosuch"`) ||
		!strings.Contains(err.Error(), "ztunnel") {
		t.Errorf("unknown image: %v, want an error naming it and the known images", err)
	}
	_, err := b.Build(context.Background(), CoreDNS)
	if !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "coredns") || !strings.Contains(err.Error(), "make tools") {
		t.Errorf("missing coredns binary: %v, want ErrMissing naming coredns and `make tools`", err)
	}
}

func TestParseImageList(t *testing.T) {
	out := `REF                              TYPE                                    DIGEST                                                                  SIZE     PLATFORMS   LABELS
ambient-lite.local/echo:dev      application/vnd.oci.image.manifest.v1+json sha256:aaaa 66.9 MiB linux/amd64 -
ambient-lite.local/pause:dev     application/vnd.oci.image.manifest.v1+json sha256:bbbb 1.4 MiB  linux/amd64 io.cri-containerd.pinned=pinned
`
	for ref, want := range map[string]string{
		"ambient-lite.local/echo:dev": "sha256:aaaa", "ambient-lite.local/pause:dev": "sha256:bbbb",
		"ambient-lite.local/echo": "", "other:dev": "",
	} {
		if got := parseImageList(out, ref); got != want {
			t.Errorf("parseImageList(%s) = %q, want %q", ref, got, want)
		}
	}
}

func mustOpen(t *testing.T, p string) io.Reader {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func untar(t *testing.T, r io.Reader) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimSuffix(h.Name, "/")] = b
	}
}
