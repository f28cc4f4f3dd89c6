// Command etcd is the pinned etcd server (go.etcd.io/etcd/server/v3) used by the local
// control plane; it is built by tools/build.sh and is not part of the ambient-lite module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
