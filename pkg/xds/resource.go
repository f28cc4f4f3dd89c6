package xds

import "google.golang.org/protobuf/types/known/anypb"

// Wildcard is the resource name that subscribes to every resource of a type.
const Wildcard = "*"

// Resource is one named, versioned, opaque resource.
type Resource struct {
	Name    string
	Version string
	// Resource is the payload; its type URL should be the type URL it is sent under.
	Resource *anypb.Any
}
