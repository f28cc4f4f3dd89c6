// Command l7translate runs istiod-lite's L7 translation (istiod-lite/internal/l7) for the
// netns tests, which cannot import it: Go's internal rule keeps it to istiod-lite/. The
// tests build it with `go build -overlay`, placing this file under istiod-lite/ for that
// build only (nothing is written there). It reads an input as JSON on stdin (the l7.Input
// fields, Services as a list, HTTPRoutes and AuthorizationPolicies as their Kubernetes
// JSON) and writes the RouteConfigurations, each as base64 protobuf, and the translation's
// errors as JSON on stdout.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"google.golang.org/protobuf/proto"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/l7"
)

type input struct {
	Gateway               types.NamespacedName
	Bound                 []l7.Service
	Services              []l7.Service
	HTTPRoutes            []*gatewayv1.HTTPRoute
	AuthorizationPolicies []*securityclient.AuthorizationPolicy
	TrustDomain           string
}

type output struct {
	Resources map[string][]byte `json:"resources"`
	Errors    []string          `json:"errors"`
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "l7translate: decoding the input:", err)
		os.Exit(1)
	}
	services := map[types.NamespacedName]l7.Service{}
	for _, s := range in.Services {
		services[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = s
	}
	res := l7.Translate(l7.Input{Gateway: in.Gateway, Bound: in.Bound, Services: services, HTTPRoutes: in.HTTPRoutes,
		AuthorizationPolicies: in.AuthorizationPolicies, TrustDomain: in.TrustDomain})
	out := output{Resources: map[string][]byte{}}
	for name, rc := range res.Resources {
		b, err := proto.Marshal(rc)
		if err != nil {
			fmt.Fprintln(os.Stderr, "l7translate:", name, err)
			os.Exit(1)
		}
		out.Resources[name] = b
	}
	for _, e := range res.Errors {
		out.Errors = append(out.Errors, e.Error())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "l7translate:", err)
		os.Exit(1)
	}
}
