// An HTTP client that never closes resp.Body: each request's connection stays with the response,
// never goes back to the pool, and sits in CLOSE_WAIT once the server closes it for idleness.
//
//	go_http_client_leak URL N   (prints STATUS n per request, then DONE; exits at stdin's EOF)
package main

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"strconv"
)

//go:noinline
func fetchStatus(url string) int {
	resp, err := http.Get(url) // the bug: resp.Body is never closed
	if err != nil {
		return -1
	}
	return resp.StatusCode
}

func main() {
	n, _ := strconv.Atoi(os.Args[2])
	for i := 0; i < n; i++ {
		fmt.Println("STATUS", fetchStatus(os.Args[1]))
	}
	fmt.Println("DONE")
	bufio.NewReader(os.Stdin).ReadString('\n')
}
