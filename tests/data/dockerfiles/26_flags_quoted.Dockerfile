FROM alpine
COPY --chown="1:1" a b
RUN --mount=type=cache,"target=/x y" echo
COPY --from=build -- --weird /dst
