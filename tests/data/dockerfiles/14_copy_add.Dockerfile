FROM alpine
COPY . /app
COPY --from=build --chown=1000:1000 --chmod=755 /out/bin /usr/bin/
COPY --link --parents src/*/x /dst/
COPY --exclude=*.md --exclude=*.txt . /app
ADD --checksum=sha256:abc https://example.com/a.tgz /tmp/
ADD --keep-git-dir=true https://github.com/x/y.git /src
ADD a.tar.gz /
COPY ["a b", "c d", "/dst/"]
COPY --chown=app ["x", "/y"]
