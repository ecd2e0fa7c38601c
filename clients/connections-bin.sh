# Sourced by the client test scripts: sets and exports CONNECTIONS_BIN, the server binary they run.
# Unless it is set already, it is the newer of the debug and release builds of the repository
# (target/debug/connections, target/release/connections) that exist; nothing is built here.
# Expects $here, the client's directory.
if [[ -z ${CONNECTIONS_BIN:-} ]]; then
    debug=$here/../../target/debug/connections release=$here/../../target/release/connections
    # -nt is true when only the first file exists.
    if [[ -x $release && (! -x $debug || $release -nt $debug) ]]; then
        CONNECTIONS_BIN=$release
    else
        CONNECTIONS_BIN=$debug
    fi
fi
export CONNECTIONS_BIN
