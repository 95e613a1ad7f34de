ARG GO=1.22
FROM golang:${GO} AS build
WORKDIR /src
COPY . .
RUN go build -o /out/app
FROM alpine AS final
COPY --from=build /out/app /app
ENTRYPOINT ["/app"]
