package pluginapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// UnreachableError means no answer came from the agent: the socket is missing, nobody
// listens on it, or the connection broke or timed out before a response.
type UnreachableError struct {
	Socket string
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("node agent unreachable on unix socket %s: %v", e.Socket, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// StatusError is the agent's refusal: a non-2xx answer and the message it carried.
type StatusError struct {
	StatusCode int
	Message    string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("node agent answered %d: %s", e.StatusCode, e.Message)
}

// Client calls a node agent over its unix socket. It is safe for concurrent use.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the agent listening on socketPath (DefaultSocketPath if
// empty). timeout bounds each call, connecting included; zero means calls are bounded only by
// their context.
func NewClient(socketPath string, timeout time.Duration) *Client {
	if socketPath == "" {
		socketPath = DefaultSocketPath
	}
	var d net.Dialer
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socketPath)
		},
		DisableKeepAlives: true, // one call per plugin process: nothing to reuse
	}
	return &Client{socket: socketPath, http: &http.Client{Transport: tr, Timeout: timeout}}
}

// Socket is the path the client dials.
func (c *Client) Socket() string { return c.socket }

// Enrollment asks the agent whether the pod is enrolled in the mesh.
func (c *Client) Enrollment(ctx context.Context, req EnrollmentRequest) (*EnrollmentResponse, error) {
	var resp EnrollmentResponse
	if err := c.do(ctx, http.MethodPost, PathEnrollment, req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Add asks the agent to redirect the pod and waits for its answer. A nil error means the
// agent answered 200; the caller still checks Redirected.
func (c *Client) Add(ctx context.Context, req AddRequest) (*AddResponse, error) {
	var resp AddResponse
	if err := c.do(ctx, http.MethodPost, PathAdd, req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Del tells the agent the pod is being torn down.
func (c *Client) Del(ctx context.Context, req DelRequest) error {
	return c.do(ctx, http.MethodPost, PathDel, req, nil)
}

// Check asks whether redirection is present for the pod.
func (c *Client) Check(ctx context.Context, req CheckRequest) error {
	return c.do(ctx, http.MethodPost, PathCheck, req, nil)
}

// Ping checks that the agent is serving.
func (c *Client) Ping(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, PathPing, nil, nil)
}

// do sends body (if not nil) as JSON and decodes a 2xx answer into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encoding %s request: %w", path, err)
		}
		rd = bytes.NewReader(b)
	}
	// The host is ignored by the dialer; "agent" just makes a valid URL.
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, rd)
	if err != nil {
		return fmt.Errorf("building %s request: %w", path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // drop net/http's `Post "http://agent/v1/add":` prefix
		}
		return &UnreachableError{Socket: c.socket, Err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes))
	if err != nil {
		return &UnreachableError{Socket: c.socket, Err: fmt.Errorf("reading %s response: %w", path, err)}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e ErrorResponse
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
			if e.Error == "" {
				e.Error = http.StatusText(resp.StatusCode)
			}
		}
		return &StatusError{StatusCode: resp.StatusCode, Message: e.Error}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decoding %s response: %w", path, err)
		}
	}
	return nil
}
