// Command jwks-cache is the jwkscache daemon and its command-line tools.
package main

func main() {}
