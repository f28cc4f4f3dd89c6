package pluginapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// maxBodyBytes bounds a request body; real requests are a few hundred bytes.
const maxBodyBytes = 64 << 10

// Handler serves the contract for agent. Serve it on a unix socket (http.Server over
// net.Listen("unix", path)); the agent owns the listener and the socket file's permissions.
func Handler(agent Agent) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathEnrollment, func(w http.ResponseWriter, r *http.Request) {
		var req EnrollmentRequest
		if !decode(w, r, &req) {
			return
		}
		resp, err := agent.Enrollment(r.Context(), req)
		if err != nil {
			writeError(w, errorStatus(err), err.Error())
			return
		}
		writeJSON(w, http.StatusOK, resp)
	})
	mux.HandleFunc("POST "+PathAdd, func(w http.ResponseWriter, r *http.Request) {
		var req AddRequest
		if !decode(w, r, &req) {
			return
		}
		resp, err := agent.Add(r.Context(), req)
		if err != nil {
			writeError(w, errorStatus(err), err.Error())
			return
		}
		writeJSON(w, http.StatusOK, resp)
	})
	mux.HandleFunc("POST "+PathDel, func(w http.ResponseWriter, r *http.Request) {
		var req DelRequest
		if !decode(w, r, &req) {
			return
		}
		if err := agent.Del(r.Context(), req); err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
	})
	check := func(w http.ResponseWriter, r *http.Request, req CheckRequest) {
		if err := agent.Check(r.Context(), req); err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
	}
	mux.HandleFunc("POST "+PathCheck, func(w http.ResponseWriter, r *http.Request) {
		var req CheckRequest
		if decode(w, r, &req) {
			check(w, r, req)
		}
	})
	mux.HandleFunc("GET "+PathCheck, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		req := CheckRequest{
			PodName:      q.Get("podName"),
			PodNamespace: q.Get("podNamespace"),
			PodUID:       q.Get("podUID"),
			ContainerID:  q.Get("containerID"),
			Netns:        q.Get("netns"),
		}
		if err := req.Validate(); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		check(w, r, req)
	})
	mux.HandleFunc("GET "+PathPing, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, struct{}{})
	})
	return mux
}

// errorStatus is the HTTP status of an Agent's error.
func errorStatus(err error) int {
	if errors.Is(err, ErrUnavailable) {
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// decode reads a JSON body into v and validates it, or answers 400 and returns false.
func decode[T interface{ Validate() error }](w http.ResponseWriter, r *http.Request, v *T) bool {
	body := http.MaxBytesReader(w, r.Body, maxBodyBytes)
	dec := json.NewDecoder(body)
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body exceeds %d bytes", mbe.Limit))
		case errors.Is(err, io.EOF):
			writeError(w, http.StatusBadRequest, "empty request body; expected a JSON object")
		default:
			writeError(w, http.StatusBadRequest, "decoding request body: "+err.Error())
		}
		return false
	}
	if err := (*v).Validate(); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, ErrorResponse{Error: msg})
}
