FROM alpine
RUN echo hello world
RUN   apk add --no-cache   curl  
run echo lower
RUN echo 'single quoted $HOME' "double $HOME"
