package l7config

import (
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// Tables is an immutable set of route tables by resource name. Never modify it.
type Tables map[string]*Table

// Store holds the current tables. Apply is its only writer; Current is lock-free.
type Store struct {
	mu     sync.Mutex
	tables Tables
	cur    atomic.Pointer[Tables]
}

// NewStore returns an empty store.
func NewStore() *Store {
	s := &Store{tables: Tables{}}
	t := Tables{}
	s.cur.Store(&t)
	return s
}

// Current returns the current tables.
func (s *Store) Current() Tables { return *s.cur.Load() }

// Apply compiles upserts (by resource name) and removes removals, atomically: if any
// configuration is invalid nothing changes and the error names every bad resource.
func (s *Store) Apply(upserts map[string]*routev3.RouteConfiguration, removals []string) error {
	compiled := make(Tables, len(upserts))
	var errs []error
	for name, rc := range upserts {
		t, err := Compile(rc)
		if err != nil {
			errs = append(errs, fmt.Errorf("route configuration %s: %w", name, err))
			continue
		}
		compiled[name] = t
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	next := maps.Clone(s.tables)
	for _, n := range removals {
		delete(next, n)
	}
	maps.Copy(next, compiled)
	s.tables = next
	s.cur.Store(&next)
	return nil
}
