// Package images builds the local cluster's container images without Docker or a registry
// and loads them into a node's containerd.
//
// An image is a [Spec]: files (static binaries, small config) placed in one uncompressed
// layer on an empty base, plus the image config. [Write] turns it into an OCI image layout
// archive with go-containerregistry, deterministically (fixed timestamps and owners, sorted
// entries), named by a hash of its inputs, so an unchanged image is never rebuilt. [Load]
// imports archives with `ctr images import` unless the node already holds the same manifest.
// The catalog of the mesh's and the tests' images is in catalog.go. It is not a general image
// builder: no base images, no Dockerfiles, one layer per image.
package images

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// File is one entry of an image's layer. Exactly one of Src, Data or Link is set, or none for
// a directory.
type File struct {
	Path string // absolute path in the image
	Src  string // host file whose content is copied
	Data []byte // literal content
	Link string // symlink target
	Mode int64  // Unix mode bits (0o1777: a sticky /tmp); 0 means 0755, or 0644 for Data
}

// Spec describes an image.
type Spec struct {
	// Ref is the image reference the nodes know it by, e.g. ambient-lite.local/ztunnel:dev.
	Ref        string
	Files      []File
	Entrypoint []string
	Cmd        []string
	Env        []string
	User       string
	WorkingDir string
}

// Image is a written image archive.
type Image struct {
	Ref     string `json:"ref"`
	Digest  string `json:"digest"` // manifest digest, what containerd records for Ref
	Archive string `json:"archive"`
}

// epoch is every file's and the image's timestamp: the archive depends on content only.
var epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Write writes spec as an OCI image layout archive into dir, unless an archive of the same
// inputs is there already, and returns it. Older archives of the same image are removed.
func Write(spec Spec, dir string) (Image, error) {
	key, err := spec.inputKey()
	if err != nil {
		return Image{}, err
	}
	base := archiveBase(spec.Ref)
	archive := filepath.Join(dir, base+"-"+key[:16]+".tar")
	if img, err := readMeta(archive); err == nil && img.Ref == spec.Ref {
		return img, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Image{}, fmt.Errorf("creating image dir: %w", err)
	}
	layerTar, err := spec.layer()
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", spec.Ref, err)
	}
	img, err := spec.image(layerTar)
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", spec.Ref, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return Image{}, err
	}
	if err := writeArchive(img, spec.Ref, archive); err != nil {
		return Image{}, fmt.Errorf("image %s: %w", spec.Ref, err)
	}
	out := Image{Ref: spec.Ref, Digest: digest.String(), Archive: archive}
	b, _ := json.Marshal(out)
	if err := os.WriteFile(archive+".json", b, 0o644); err != nil {
		return Image{}, fmt.Errorf("recording image %s: %w", spec.Ref, err)
	}
	old, _ := filepath.Glob(filepath.Join(dir, base+"-*.tar*"))
	for _, o := range old {
		if o != archive && o != archive+".json" {
			_ = os.Remove(o)
		}
	}
	return out, nil
}

func readMeta(archive string) (Image, error) {
	var img Image
	b, err := os.ReadFile(archive + ".json")
	if err != nil {
		return img, err
	}
	if err := json.Unmarshal(b, &img); err != nil {
		return img, err
	}
	if _, err := os.Stat(archive); err != nil {
		return img, err
	}
	img.Archive = archive
	return img, nil
}

// archiveBase turns a reference into a file name: ambient-lite.local/ztunnel:dev -> ztunnel-dev.
func archiveBase(ref string) string {
	name := path.Base(ref)
	return strings.NewReplacer(":", "-", "@", "-").Replace(name)
}

// inputKey hashes everything the archive is made from.
func (s Spec) inputKey() (string, error) {
	h := sha256.New()
	cfg, _ := json.Marshal(struct {
		Ref, User, WorkingDir string
		Entrypoint, Cmd, Env  []string
	}{s.Ref, s.User, s.WorkingDir, s.Entrypoint, s.Cmd, s.Env})
	h.Write(cfg)
	for _, f := range s.sortedFiles() {
		fmt.Fprintf(h, "\x00%s\x00%o\x00%s\x00", f.Path, f.mode(), f.Link)
		switch {
		case f.Src != "":
			r, err := os.Open(f.Src)
			if err != nil {
				return "", fmt.Errorf("image %s: %w", s.Ref, err)
			}
			_, err = io.Copy(h, r)
			r.Close()
			if err != nil {
				return "", fmt.Errorf("image %s: reading %s: %w", s.Ref, f.Src, err)
			}
		default:
			h.Write(f.Data)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (f File) mode() int64 {
	if f.Mode != 0 {
		return f.Mode
	}
	if f.Data != nil {
		return 0o644
	}
	return 0o755
}

func (s Spec) sortedFiles() []File {
	fs := append([]File(nil), s.Files...)
	sort.SliceStable(fs, func(i, j int) bool { return fs[i].Path < fs[j].Path })
	return fs
}

// layer returns the layer as a tar, every parent directory included, owned by root.
func (s Spec) layer() ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	var addDirs func(p string) error
	addDirs = func(p string) error {
		if p == "/" || p == "." || dirs[p] {
			return nil
		}
		if err := addDirs(path.Dir(p)); err != nil {
			return err
		}
		dirs[p] = true
		return tw.WriteHeader(header(tar.TypeDir, p, 0o755, 0, ""))
	}
	for _, f := range s.sortedFiles() {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path {
			return nil, fmt.Errorf("file path %q is not absolute and clean", f.Path)
		}
		if err := addDirs(path.Dir(f.Path)); err != nil {
			return nil, err
		}
		switch {
		case f.Link != "":
			if err := tw.WriteHeader(header(tar.TypeSymlink, f.Path, 0o777, 0, f.Link)); err != nil {
				return nil, err
			}
		case f.Src != "" || f.Data != nil:
			data := f.Data
			if f.Src != "" {
				var err error
				if data, err = os.ReadFile(f.Src); err != nil {
					return nil, err
				}
			}
			if err := tw.WriteHeader(header(tar.TypeReg, f.Path, f.mode(), int64(len(data)), "")); err != nil {
				return nil, err
			}
			if _, err := tw.Write(data); err != nil {
				return nil, err
			}
		default:
			if dirs[f.Path] {
				return nil, fmt.Errorf("directory %s listed after a file below it", f.Path)
			}
			dirs[f.Path] = true
			if err := tw.WriteHeader(header(tar.TypeDir, f.Path, f.mode(), 0, "")); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func header(typ byte, p string, mode int64, size int64, link string) *tar.Header {
	name := strings.TrimPrefix(p, "/")
	if typ == tar.TypeDir {
		name += "/"
	}
	return &tar.Header{
		Typeflag: typ, Name: name, Linkname: link, Size: size, Mode: mode,
		ModTime: epoch, Uname: "root", Gname: "root", Format: tar.FormatPAX,
	}
}

func (s Spec) image(layerTar []byte) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.Append(img, mutate.Addendum{
		Layer:   static.NewLayer(layerTar, types.OCIUncompressedLayer),
		History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "ambient-lite tests/images"},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", "amd64", v1.Time{Time: epoch}
	cf.Config = v1.Config{Entrypoint: s.Entrypoint, Cmd: s.Cmd, Env: s.Env, User: s.User, WorkingDir: s.WorkingDir}
	return mutate.ConfigFile(img, cf)
}

// writeArchive writes img as an OCI image layout and packs it into one tar file, which
// `ctr images import` reads; the reference is in the index annotations.
func writeArchive(img v1.Image, ref, archive string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(archive), ".layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return fmt.Errorf("writing OCI layout: %w", err)
	}
	err = p.AppendImage(img,
		layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": ref,
			"io.containerd.image.name":          ref,
		}),
		layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}),
	)
	if err != nil {
		return fmt.Errorf("writing OCI layout: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(archive), ".archive-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := tarDir(f, tmp); err != nil {
		f.Close()
		return fmt.Errorf("packing OCI layout: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), archive)
}

func tarDir(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			return tw.WriteHeader(header(tar.TypeDir, "/"+rel, 0o755, 0, ""))
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(header(tar.TypeReg, "/"+rel, 0o644, info.Size(), "")); err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// ErrMissing means an image's inputs (a binary) are not built.
var ErrMissing = errors.New("image input missing")
