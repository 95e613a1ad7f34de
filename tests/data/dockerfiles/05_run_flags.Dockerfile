FROM alpine
RUN --mount=type=cache,target=/root/.cache,id=pip pip install x
RUN --mount=type=bind,source=.,target=/src --mount=type=secret,id=tok cat /run/secrets/tok
RUN --network=none --security=insecure echo hi
RUN --mount=type=ssh git clone x
RUN --mount=type=tmpfs,target=/tmp true
