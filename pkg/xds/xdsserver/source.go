package xdsserver

import (
	"context"
	"sort"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambient-lite/ambient-lite/pkg/xds"
)

// StreamInfo describes one server stream to a Source. It is fixed once the first request
// has arrived and is read-only.
type StreamInfo struct {
	// ID is unique per stream for the life of the Server.
	ID uint64
	// NodeID and Metadata come from the node of the stream's first request.
	NodeID   string
	Metadata *structpb.Struct
	// Principal is what ServerOptions.Authenticate returned (nil without it).
	Principal any
}

// Request is what a Source is asked to answer for one stream and one type URL.
type Request struct {
	Stream  *StreamInfo
	TypeURL string
	// Wildcard is true when the stream wants every resource of the type; Names then holds
	// any names it subscribed to explicitly as well.
	Wildcard bool
	// Names are the explicitly subscribed names, sorted.
	Names []string
	// Have maps the names the client holds (or has been sent) to their versions. Read only,
	// and only during Generate: it may be the stream's own state, which changes afterwards
	// (copy it to keep it).
	Have map[string]string
	// Changed lists the names pushed since the stream was last answered for this type; nil
	// means anything may have changed (first request, reconnect, Push with nil names).
	Changed []string
}

// Delta is a Source's answer: resources to send and names to remove. The Server drops
// upserts whose version the client already has (or rejected) and removals of names the
// client does not have, unless the name was just subscribed explicitly (so an on-demand
// request for a missing resource is answered with its removal).
type Delta struct {
	Upserts  []*xds.Resource
	Removals []string
}

// Source produces the resources of one type URL. Generate is called from stream
// goroutines, concurrently for different streams, and must be safe for that; it should not
// block for long, since it delays only its own stream.
type Source interface {
	Generate(ctx context.Context, req *Request) (*Delta, error)
}

// SourceFunc adapts a function to Source.
type SourceFunc func(ctx context.Context, req *Request) (*Delta, error)

// Generate calls f.
func (f SourceFunc) Generate(ctx context.Context, req *Request) (*Delta, error) { return f(ctx, req) }

// Diff is the answer of a Source backed by a full snapshot: every resource of all that the
// request subscribes to and the client does not have at that version, the names the client
// has that are gone from all, and the explicitly subscribed names that do not exist. When
// the request lists what Changed, only those names are looked at, so a push of one name
// costs one lookup however large the snapshot.
func Diff(all map[string]*xds.Resource, req *Request) *Delta {
	d := &Delta{}
	want := func(name string) bool { return req.Wildcard || contains(req.Names, name) }
	if req.Changed != nil {
		for _, name := range req.Changed {
			r, exists := all[name]
			v, has := req.Have[name]
			switch {
			case exists && want(name) && (!has || v != r.Version):
				d.Upserts = append(d.Upserts, r)
			case !exists && (has || contains(req.Names, name)):
				d.Removals = append(d.Removals, name)
			}
		}
		return d // Changed is sorted, so both lists are
	}
	for name, r := range all {
		if want(name) && req.Have[name] != r.Version {
			d.Upserts = append(d.Upserts, r)
		}
	}
	for name := range req.Have {
		if _, ok := all[name]; !ok {
			d.Removals = append(d.Removals, name)
		}
	}
	for _, name := range req.Names {
		_, exists := all[name]
		_, has := req.Have[name]
		if !exists && !has {
			d.Removals = append(d.Removals, name)
		}
	}
	sort.Slice(d.Upserts, func(i, j int) bool { return d.Upserts[i].Name < d.Upserts[j].Name })
	sort.Strings(d.Removals)
	return d
}

func contains(sorted []string, s string) bool {
	i := sort.SearchStrings(sorted, s)
	return i < len(sorted) && sorted[i] == s
}
