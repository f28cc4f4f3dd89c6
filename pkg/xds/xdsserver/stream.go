package xdsserver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// stream is one DeltaAggregatedResources call. Its handler goroutine owns the session;
// a receive goroutine feeds it requests and a send goroutine writes its responses, so a
// client that stops reading blocks only its own send goroutine.
type stream struct {
	srv  *Server
	gs   discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	wake chan struct{}

	mu     sync.Mutex
	pushed map[string]*changeSet
}

// notify merges pushed changes; it never blocks.
func (st *stream) notify(pending map[string]*changeSet) {
	st.mu.Lock()
	for typeURL, cs := range pending {
		mine, ok := st.pushed[typeURL]
		if !ok {
			mine = &changeSet{}
			st.pushed[typeURL] = mine
		}
		if cs.all {
			mine.add(nil)
		} else {
			mine.add(keys(cs.names))
		}
	}
	st.mu.Unlock()
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

func keys(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// DeltaAggregatedResources serves one delta ADS stream.
func (s *Server) DeltaAggregatedResources(gs discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	ctx := gs.Context()
	var principal any
	if s.opts.Authenticate != nil {
		p, err := s.opts.Authenticate(ctx)
		if err != nil {
			if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
				return status.Errorf(st.Code(), "xds: authenticating stream: %s", st.Message())
			}
			return status.Errorf(codes.Unauthenticated, "xds: authenticating stream: %v", err)
		}
		principal = p
	}
	st := &stream{srv: s, gs: gs, wake: make(chan struct{}, 1), pushed: map[string]*changeSet{}}
	if !s.add(st) {
		return status.Error(codes.Unavailable, "xds: server closing")
	}
	defer s.remove(st)
	return st.run(ctx, principal)
}

func (st *stream) run(ctx context.Context, principal any) error {
	s := st.srv
	done := make(chan struct{})
	defer close(done)
	reqs := make(chan *discoveryv3.DeltaDiscoveryRequest)
	recvErr := make(chan error, 1)
	out := make(chan *discoveryv3.DeltaDiscoveryResponse, 1)
	sent := make(chan error, 1)
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		for {
			req, err := st.gs.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-done:
				return
			}
		}
	}()
	go func() {
		defer s.wg.Done()
		for {
			select {
			case resp := <-out:
				err := st.gs.Send(resp)
				select {
				case sent <- err:
				case <-done:
					return
				}
			case <-done:
				return
			}
		}
	}()

	var (
		info *StreamInfo
		sess = newSession(func(t string) bool { _, ok := s.opts.Sources[t]; return ok })
		busy bool
		log  = s.log
	)
	for {
		if info != nil && !busy {
			resp, err := st.generate(ctx, sess, info, log)
			if err != nil {
				return err
			}
			if resp != nil {
				out <- resp
				busy = true
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.ctx.Done():
			return status.Error(codes.Unavailable, "xds: server closing")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		case err := <-sent:
			if err != nil {
				return err
			}
			busy = false
		case <-st.wake:
			st.mu.Lock()
			pushed := st.pushed
			st.pushed = map[string]*changeSet{}
			st.mu.Unlock()
			for typeURL, cs := range pushed {
				sess.notify(typeURL, cs.names, cs.all)
			}
		case req := <-reqs:
			if info == nil {
				info = &StreamInfo{
					ID: s.ids.Add(1), NodeID: req.GetNode().GetId(),
					Metadata: req.GetNode().GetMetadata(), Principal: principal,
				}
				log = s.log.With("node", info.NodeID, "stream", info.ID)
			}
			n, err := sess.handle(req)
			if err != nil {
				return status.Errorf(codes.InvalidArgument, "xds: %v", err)
			}
			if n != nil {
				log.Warn("xds response rejected (NACK)", "type", n.typeURL, "nonce", n.nonce,
					"detail", n.detail, "resources", n.names)
			}
		}
	}
}

// generate answers the next type with pending work; nil when there is nothing to send.
func (st *stream) generate(ctx context.Context, sess *session, info *StreamInfo, log *slog.Logger) (*discoveryv3.DeltaDiscoveryResponse, error) {
	for {
		w, ok := sess.next(info)
		if !ok {
			return nil, nil
		}
		d, err := st.srv.opts.Sources[w.typeURL].Generate(ctx, w.req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, status.FromContextError(ctx.Err()).Err()
			}
			// The client keeps what it has; the next push retries.
			log.Error("xds source failed", "type", w.typeURL, "err", err)
			continue
		}
		if d == nil {
			d = &Delta{}
		}
		if resp := sess.respond(w, d); resp != nil {
			return resp, nil
		}
	}
}
