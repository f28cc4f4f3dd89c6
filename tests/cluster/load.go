package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/images"
)

// LoadImages builds the named catalog images (changed ones only, see tests/images) and loads
// them into every node, so pods can use them with imagePullPolicy IfNotPresent.
func (c *Cluster) LoadImages(ctx context.Context, names ...string) error {
	socks := map[string]string{}
	for _, n := range c.nodes {
		s, err := n.containerdSocket()
		if err != nil {
			return err
		}
		socks[n.Name] = s
	}
	if len(socks) == 0 {
		return errors.New("the cluster has no nodes to load images into")
	}
	return buildAndLoad(ctx, socks, c.binDir, c.imageDir, c.log, names)
}

// imageBuilder returns the catalog builder for this repository.
func imageBuilder(binDir, imageDir string, log *slog.Logger) (*images.Builder, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, fmt.Errorf("finding the repository for image builds: %w", err)
	}
	if imageDir == "" {
		imageDir = filepath.Join(root, "out", "images")
	}
	return &images.Builder{RepoRoot: root, ToolBin: binDir, OutDir: imageDir, Log: log}, nil
}

func buildAndLoad(ctx context.Context, socks map[string]string, binDir, imageDir string, log *slog.Logger, names []string) error {
	b, err := imageBuilder(binDir, imageDir, log)
	if err != nil {
		return err
	}
	imgs, err := b.Build(ctx, names...)
	if err != nil {
		return err
	}
	list := make([]images.Image, 0, len(names))
	for _, n := range names {
		list = append(list, imgs[n])
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for node, sock := range socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := images.Load(ctx, sock, list...); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("loading images into %s: %w", node, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
